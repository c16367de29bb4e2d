"""Models of every source through the stages on the session's Ray: an exported program labels as the teacher, a
class of the test's own (``code:``) is distilled and evaluated, a Hugging Face and a timm model are evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distkd import config, export, pipeline, storage
from distkd.job import Job
from distkd.models import sources
from tests.unit.test_sources import CLASSES, exported, hf_folder, user_code

ROWS = 200


def prepare(raw: dict, cifar10: Path, store: Path) -> Job:
    common = {"store": str(store), "data": {"uri": str(cifar10), "limit": ROWS, "val_limit": 100}}
    return Job.prepare(config.parse({**common, "evaluate": {"batch_size": 100}, **raw}, "<sources>"), "<sources>")


def test_program_teacher_labels_and_an_imported_student_distils(ray_cluster, cifar10, tmp_path):
    program = exported(tmp_path)
    code = [str(user_code(tmp_path, "pipeline_students"))]
    job = prepare(
        {
            "name": "sources",
            "code": code,
            "teacher": {"name": f"export:{program}"},
            "student": {
                "name": "import:pipeline_students:Net",
                "train": {"epochs": 1, "batch_size": 50, "augment": False},
            },
            "distill": {"baseline": False},
            "softlabels": {"batch_size": 100},
        },
        cifar10,
        tmp_path / "store",
    )
    out = pipeline.run(job)
    assert out["teacher"] == str(program)  # the program holds its weights: no stage 0
    assert storage.is_committed(out["softlabels"]) and storage.is_committed(out["report"])
    models = {m["role"]: m for m in storage.read_json(storage.join(out["report"], "metrics.json"))["models"]}
    assert set(models) == {"teacher", "distilled"} and all(m["metrics"]["count"] == ROWS for m in models.values())
    run = str(Path(out["distilled"]).parent)
    assert storage.read_json(storage.join(run, "run.json"))["model"]["source"] == sources.identity(
        "import:pipeline_students:Net", code
    )
    record = export.export(run, "torchscript", code=tuple(code))  # and out again, as a program
    assert record["max_abs_difference"] <= export.TOLERANCE
    assert sources.build(f"torchscript:{record['file']}", CLASSES, 3, 32)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_hugging_face_and_timm_models_are_evaluated(ray_cluster, cifar10, tmp_path):
    pytest.importorskip("timm")
    folder = hf_folder(tmp_path)
    weights = {}
    for role, name in (("teacher", f"hf:{folder}"), ("timm", "timm:mobilenetv3_small_050")):
        weights[role] = tmp_path / f"{role}.pt"
        torch.save(sources.build(name, CLASSES, 3, 32).state_dict(), weights[role])
    job = prepare(
        {
            "name": "evaluated",
            "stages": ["evaluate"],
            "teacher": {"name": "lenet5"},
            "student": {"name": "lenet5"},
            "evaluate": {
                "batch_size": 100,
                "models": [
                    {"role": "teacher", "name": f"hf:{folder}", "weights": str(weights["teacher"])},
                    {"role": "timm", "name": "timm:mobilenetv3_small_050", "weights": str(weights["timm"])},
                ],
            },
        },
        cifar10,
        tmp_path / "store",
    )
    report = pipeline.run(job)["report"]
    models = storage.read_json(storage.join(report, "metrics.json"))["models"]
    assert [m["role"] for m in models] == ["teacher", "timm"]
    assert all(m["metrics"]["count"] == ROWS for m in models)
