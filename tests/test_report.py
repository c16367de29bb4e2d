import base64
import re

import numpy as np
import pytest

from distkd.evaluate.metrics import block_stats, compute_metrics, sum_stats
from distkd.evaluate.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "ship", "truck"]


def make_models() -> list[dict]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), 500)
    onehot = np.eye(len(CLASSES))[labels]
    teacher = rng.normal(0, 1, (500, len(CLASSES))) + 3 * onehot
    models = []
    for i, (name, role, signal, params) in enumerate(
        [
            ("resnet teacher", "teacher", 3.0, 11_200_000),
            ("tiny scratch", "student (scratch)", 1.0, 410_000),
            ("tiny distilled", "student (distilled)", 1.5, 410_000),
        ]
    ):
        logits = teacher if i == 0 else rng.normal(0, 1, teacher.shape) + signal * onehot
        stats = block_stats(logits, labels, None if i == 0 else teacher)
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


def test_costs_measured_on_a_gpu_get_their_own_columns(tmp_path) -> None:
    models = make_models()
    for i, m in enumerate(models):
        m["cost_gpu"] = {**m["cost"], "latency_ms": 0.25 + i, "throughput": 9_000_000.0, "device": "cuda"}
    md = write_report(tmp_path, models, title="gpu")["report.md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert header.endswith("| GPU latency ms (b=1) | GPU throughput/s |")
    assert next(line for line in md.splitlines() if line.startswith("| tiny scratch")).endswith("| 1.25 | 9.00M |")
    assert "measured on cpu, cuda" in md
