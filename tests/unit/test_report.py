import base64
import io
import logging
import re
import sys
import threading

import numpy as np
import pytest

from distkd import console, storage
from distkd.evaluate.metrics import (
    block_stats,
    compute_metrics,
    paired_gain,
    slice_gaps,
    slice_metrics,
    slice_stats,
    sum_slices,
    sum_stats,
)
from distkd.evaluate.report import write_report
from distkd.evaluate.summary import summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "ship", "truck"]


def make_models() -> list[dict]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), 500)
    onehot = np.eye(len(CLASSES))[labels]
    teacher = rng.normal(0, 1, (500, len(CLASSES))) + 3 * onehot
    models, logits = [], []
    for i, (name, role, signal, params) in enumerate(
        [
            ("resnet teacher", "teacher", 3.0, 11_200_000),
            ("tiny scratch", "student (scratch)", 1.0, 410_000),
            ("tiny distilled", "student (distilled)", 1.5, 410_000),
        ]
    ):
        logits.append(teacher if i == 0 else rng.normal(0, 1, teacher.shape) + signal * onehot)
        baseline = logits[1] if i == 2 else None  # the distilled student beside the one from scratch
        stats = block_stats(logits[i], labels, None if i == 0 else teacher, baseline_logits=baseline)
        cost = {
            "params": params,
            "size_bytes": 4 * params + 1000,
            "flops_per_sample": 40 * params,
            "latency_ms": 1.5 + i,
            "throughput": 12345.0 / (i + 1),
            "device": "cpu",
        }
        models.append(
            {"name": name, "role": role, "metrics": compute_metrics(sum_stats([stats]), CLASSES), "cost": cost}
        )
    models[2]["baseline"] = {"role": models[1]["role"], "name": models[1]["name"], "seed": 0}
    return models


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    models = make_models()
    out = tmp_path_factory.mktemp("report") / "nested"
    return models, write_report(out, models, title="test report")


def test_files_and_pngs(report) -> None:
    _, paths = report
    pngs = {
        "confusion_resnet-teacher.png",
        "confusion_tiny-scratch.png",
        "confusion_tiny-distilled.png",
        "per_class_f1.png",
        "accuracy_vs_size.png",
    }
    assert set(paths) == pngs | {"report.md", "report.html"}
    for name, path in paths.items():
        assert path.name == name and path.is_file()
    for name in pngs:
        data = paths[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_markdown_table(report) -> None:
    models, paths = report
    md = paths["report.md"].read_text()
    assert md.startswith("# test report")
    for m in models:
        rows = [line for line in md.splitlines() if line.startswith(f"| {m['name']} | {m['role']} |")]
        assert len(rows) == 1, m["name"]
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[5] == f"{100 * m['metrics']['accuracy']:.2f}%"
        assert cells[7] == f"{m['metrics']['f1_macro']:.4f}"
        agreement = m["metrics"].get("teacher_agreement")
        assert cells[9] == ("" if agreement is None else f"{100 * agreement:.2f}%")
    teacher_row = next(line for line in md.splitlines() if line.startswith("| resnet teacher"))
    assert "| 11.2M | 44.8 MB | 448 MFLOPs |" in teacher_row
    assert "| 410K | 1.64 MB | 16.4 MFLOPs |" in md
    # Per-class F1 table: one row per class, one column per model.
    for c in CLASSES:
        (row,) = [line for line in md.splitlines() if line.startswith(f"| {c} |")]
        assert row.count("|") == 2 + 1 + len(models)
    for name in paths:
        if name.endswith(".png"):
            assert f"]({name})" in md


def test_html_inlines_every_plot(report) -> None:
    models, paths = report
    page = paths["report.html"].read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == sum(name.endswith(".png") for name in paths) == len(models) + 2
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    assert page.count("<tr>") == 1 + len(models) + 1 + len(CLASSES)
    assert "test report" in page and "tiny distilled" in page


def test_duplicate_names_rejected(tmp_path) -> None:
    models = make_models()
    models[1]["name"] = "Resnet  Teacher"
    with pytest.raises(ValueError, match="differ"):
        write_report(tmp_path, models)


@pytest.fixture(scope="module")
def gpu_report_without_baseline(tmp_path_factory) -> dict:
    """A report whose costs were also measured on a GPU and whose distilled student has no baseline: two tests'
    cases in one report (each report draws its plots, seconds of matplotlib)."""
    models = make_models()
    for i, m in enumerate(models):
        m["cost_gpu"] = {**m["cost"], "latency_ms": 0.25 + i, "throughput": 9_000_000.0, "device": "cuda"}
    del models[2]["baseline"]
    return write_report(tmp_path_factory.mktemp("gpu"), models, title="gpu")


def test_costs_measured_on_a_gpu_get_their_own_columns(gpu_report_without_baseline) -> None:
    md = gpu_report_without_baseline["report.md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert header.endswith("| GPU latency ms (b=1) | GPU throughput/s |")
    assert next(line for line in md.splitlines() if line.startswith("| tiny scratch")).endswith("| 1.25 | 9.00M |")
    assert "measured on cpu, cuda" in md


def test_gain_over_the_baseline_in_markdown_and_html(report) -> None:
    models, paths = report
    vs = models[2]["metrics"]["vs_baseline"]
    low, high = (100 * x for x in vs["ci95"])
    assert vs["gain"] == pytest.approx(models[2]["metrics"]["accuracy"] - models[1]["metrics"]["accuracy"], abs=1e-12)
    line = (
        f"tiny distilled vs tiny scratch: {100 * vs['gain']:+.2f} points (95% CI {low:+.2f} to {high:+.2f}, "
        f"paired, 500 rows; one run each); McNemar p = {vs['p_value']:.2g}; {vs['only_model']:,} rows right "
        f"only by tiny distilled, {vs['only_baseline']:,} only by the baseline"
    )
    md = paths["report.md"].read_text()
    assert f"## Gain over the baseline\n\n- {line}\n" in md and "from one seed each" in md
    assert f"<li>{line}</li>" in paths["report.html"].read_text()


def test_no_gain_section_without_a_baseline(gpu_report_without_baseline) -> None:
    paths = gpu_report_without_baseline
    assert "Gain over the baseline" not in paths["report.md"].read_text() + paths["report.html"].read_text()


def summary_of(tmp_path, models: list[dict]) -> list[str]:
    storage.write_json(storage.join(str(tmp_path), "metrics.json"), {"title": "t", "models": models})
    return summary(str(tmp_path), console.timeline.line()).splitlines()


def test_summary_gives_the_gain_with_its_interval_and_seeds(tmp_path) -> None:
    models = make_models()
    # b = 30, c = 10 of n = 1000: +2.00 points, 95% CI 2.00 +- 1.96 * sqrt(40 - 20^2 / 1000) / 10 = +0.77 to +3.23.
    models[2]["metrics"]["vs_baseline"] = paired_gain(30, 10, 1000)
    models[2]["settings"] = {"seed": 0}
    lines = summary_of(tmp_path, models)
    expected = "+2.00 points (95% CI +0.77 to +3.23, paired, 1,000 rows; one seed each (seed 0))"
    assert f"distilled student vs from scratch: {expected}" in lines

    # Two distilled students (evaluate.models), the second's baseline from another seed.
    second = {**models[2], "name": "tiny distilled t8", "settings": {"seed": 2}}
    lines = summary_of(tmp_path, [*models, second])
    assert f"tiny distilled vs tiny scratch: {expected}" in lines
    assert f"tiny distilled t8 vs tiny scratch: {expected.replace('(seed 0)', '(seeds 2 and 0)')}" in lines
    assert not any("vs" in line for line in summary_of(tmp_path, make_models()[:2]))


def test_summary_gives_each_stage_and_the_time_in_all_when_students_ran_at_once(tmp_path) -> None:
    console.timeline.clear()
    console.timeline.stages.update({"teacher": 60.0, "softlabels": None, "student-kd": 30.0, "student-scratch": 30.0})
    console.timeline.spans.extend([(0.0, 60.0), (60.0, 90.0), (61.0, 91.0)])  # the students side by side
    try:
        (line,) = [line for line in summary_of(tmp_path, make_models()) if line.startswith("stages:")]
    finally:
        console.timeline.clear()
    assert line == "stages: teacher 1m00s, softlabels reused, student-kd 30.0s, student-scratch 30.0s; 1m31s in all"


def test_what_rays_driver_threads_print_goes_to_the_log_and_the_rest_to_the_terminal(caplog) -> None:
    terminal = io.StringIO()
    out = console.RayThreadsToLog(terminal)
    notice = "(raylet) WARNING: 8 PYTHON worker processes have been started on node: n"
    listener = threading.Thread(target=lambda: print(notice, file=out), name="ray_listen_error_messages")
    with caplog.at_level(logging.WARNING):
        listener.start()
        listener.join()
        print("[student-kd] done in 5m32s", file=out)
    assert terminal.getvalue() == "[student-kd] done in 5m32s\n"
    assert [r.getMessage() for r in caplog.records if r.name == "ray.driver_output"] == [notice]


def test_what_ray_prints_as_it_shuts_down_goes_to_the_log(caplog, monkeypatch) -> None:
    """``ray.shutdown`` prints the notices its log deduplicator held back on the calling thread: a quiet console's
    last line is still distkd's."""
    import ray

    terminal = io.StringIO()
    notice = "(raylet) WARNING: 8 PYTHON worker processes have been started [repeated 2x across cluster]"
    monkeypatch.setattr(ray, "shutdown", lambda: print(notice))
    monkeypatch.setattr(sys, "stdout", console.RayThreadsToLog(terminal))
    with caplog.at_level(logging.WARNING):
        print("report: report.html")
        console.shutdown_ray()
        print("after")
    assert terminal.getvalue() == "report: report.html\nafter\n"
    assert [r.getMessage() for r in caplog.records if r.name == "ray.driver_output"] == [notice]


def with_slices(models: list[dict]) -> list[dict]:
    """The report's models evaluated per department: the distilled student behind its twin on 'Dresses'."""
    rng = np.random.default_rng(1)
    labels, department = rng.integers(0, len(CLASSES), 200), np.array(["Tops", "Dresses"] * 100)
    onehot = np.eye(len(CLASSES))[labels]
    scratch = rng.normal(0, 1, onehot.shape) + 1.0 * onehot
    distilled = np.where((department == "Dresses")[:, None], -onehot, scratch + 2 * onehot)
    per_model = {"teacher": 3 * onehot, "scratch": scratch, "distilled": distilled}
    for m, logits in zip(models, per_model.values()):
        m["slices"] = slice_metrics(sum_slices([slice_stats({"department": department}, logits, labels)]))
    models[2]["slice_gaps"] = slice_gaps(models[2]["slices"], models[1]["slices"])
    return models


def test_per_slice_table_plot_and_the_worst_gap_on_the_summary(tmp_path) -> None:
    models = with_slices(make_models())
    paths = write_report(tmp_path / "report", models)
    md = paths["report.md"].read_text()
    assert "## Per slice" in md and "tiny distilled gap" in md
    dresses = next(line for line in md.splitlines() if line.startswith("| department = Dresses"))
    assert dresses.endswith(" behind |") and "| 100 |" in dresses
    tops = next(line for line in md.splitlines() if line.startswith("| department = Tops"))
    assert "behind" not in tops
    assert paths["slices_department.png"].read_bytes().startswith(PNG_MAGIC)
    assert "Per slice" in paths["report.html"].read_text()
    worst = models[2]["slice_gaps"][0]
    line = f"  worst slice department = Dresses (100 rows): macro F1 {worst['gap']:+.4f}; behind on 1 of 2 slices"
    assert worst["gap"] < 0 and line in summary_of(tmp_path, models)


def test_no_slice_section_without_slices(report) -> None:
    _, paths = report
    assert "Per slice" not in paths["report.md"].read_text() and not any(p.startswith("slices_") for p in paths)


def test_lines_printed_at_once_from_threads_never_share_a_line(capsys):
    def burst(label: str) -> None:
        for i in range(300):
            console.say(f"[{label}] line {i}")

    threads = [threading.Thread(target=burst, args=(name,)) for name in ("student-kd", "student-scratch")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 600 and all(line.count("[") == 1 for line in lines)
