"""Model sources (distkd/models/sources.py): a real model of each source, with random weights, no Ray."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest
import torch

from distkd import checks, config
from distkd.config import ConfigError
from distkd.job import Job
from distkd.models import load_weights, sources
from distkd.models.students import LeNet5
from distkd.specs import ModelSpec

CLASSES, SHAPE = 10, (3, 32, 32)


def width(name: str, code: tuple[str, ...] = (), **kwargs) -> int:
    model = sources.build(name, CLASSES, SHAPE[0], SHAPE[1], code, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *SHAPE))
    assert out.shape[0] == 2
    return out.shape[1]


def scripted(folder: Path, classes: int = CLASSES) -> Path:
    path = folder / "teacher.torchscript.pt"
    torch.jit.save(torch.jit.script(LeNet5(classes)), path)
    return path


def exported(folder: Path) -> Path:
    path = folder / "teacher.pt2"
    batch = ({0: torch.export.Dim.DYNAMIC},)
    program = torch.export.export(LeNet5(CLASSES), (torch.randn(2, *SHAPE),), dynamic_shapes=batch)
    torch.export.save(program, path)
    return path


def hf_folder(folder: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    sizes = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, num_labels=CLASSES, **sizes)
    transformers.ViTForImageClassification(cfg).save_pretrained(folder / "vit")
    return folder / "vit"


NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, hidden, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def builder(hidden=4):
    return Net(10, 3, hidden)
"""


def user_code(folder: Path, module: str, text: str = NET) -> Path:
    path = folder / f"{module}.py"
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_and_torchvision_build_for_the_data():
    assert width("resnet9", width=4) == CLASSES
    assert width("torchvision:mobilenet_v3_small") == CLASSES
    assert sources.identity("resnet9") is None
    assert sources.identity("torchvision:resnet18").startswith("torchvision ")


def test_timm_model():
    pytest.importorskip("timm")
    assert width("timm:mobilenetv3_small_050") == CLASSES
    assert sources.identity("timm:mobilenetv3_small_050").startswith("timm ")
    assert sources.trainable("timm:mobilenetv3_small_050")


def test_hugging_face_folder_gives_logits_and_is_hashed_by_its_files(tmp_path):
    folder = hf_folder(tmp_path)
    name = f"hf:{folder}"
    assert width(name) == CLASSES
    before = sources.identity(name)
    assert before == sources.identity(name) and before.startswith("sha256:")
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"hidden_act"', '"hidden_act" '))
    assert sources.identity(name) != before


def test_programs_are_inference_only_and_carry_their_weights(tmp_path):
    for name in (f"torchscript:{scripted(tmp_path)}", f"export:{exported(tmp_path)}"):
        assert width(name) == CLASSES
        assert not sources.trainable(name)
        path = sources.split(name)[1]
        assert sources.own_weights(name) == path
        assert sources.identity(name).startswith("sha256:")
        model = sources.build(name, CLASSES, 3, 32)
        assert load_weights(model, path) is model  # the program's file is its weights: nothing more to load
    assert sources.own_weights("resnet9") is None and sources.trainable("resnet9")


def test_imported_class_gets_the_shape_and_kwargs(tmp_path):
    code = (str(user_code(tmp_path, "own_models_a")),)
    assert width("import:own_models_a:Net", code, hidden=5) == CLASSES
    model = sources.build("import:own_models_a:Net", 7, 1, 28, code, hidden=5)
    assert model.head.out_features == 7 and model.body[0].in_channels == 1 and model.head.in_features == 5
    assert width("import:own_models_a:builder", code) == CLASSES  # a builder that takes no shape arguments


def test_imported_code_identity_follows_the_class_body(tmp_path):
    path = user_code(tmp_path, "own_models_b")
    code = (str(path),)
    before = sources.identity("import:own_models_b:Net", code)
    path.write_text(path.read_text())  # rewritten, same bytes
    assert sources.identity("import:own_models_b:Net", code) == before
    path.write_text(path.read_text().replace("hidden=8", "hidden=16"))
    assert sources.identity("import:own_models_b:Net", code) != before


def test_code_folder_is_a_package(tmp_path):
    package = tmp_path / "ownpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    user_code(package, "nets")
    code = (str(package),)
    assert width("import:ownpkg.nets:Net", code) == CLASSES
    before = sources.identity("import:ownpkg.nets:Net", code)
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "nets.cpython-311.pyc").write_bytes(b"\0")
    assert sources.identity("import:ownpkg.nets:Net", code) == before  # caches are not code


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nosuchnet", "unknown model 'nosuchnet'; known: dcn_v2, lenet5"),
        ("bogus:x", "unknown model source 'bogus'"),
        ("timm:", "names no model after 'timm:'"),
        ("torchvision:not_a_model", "torchvision has no classification model 'not_a_model'"),
        ("import:own_models_c", "expected import:<module>:<callable>"),
        ("import:own_models_c:Missing", "module 'own_models_c'"),
        ("import:no_such_module_here:Net", "no module 'no_such_module_here'"),
        ("import:own_models_broken:Net", "importing 'own_models_broken' failed: ZeroDivisionError"),
        ("torchscript:/no/such/file.pt", "/no/such/file.pt: no such program file"),
    ],
)
def test_clear_errors(tmp_path, name, message):
    code = (str(user_code(tmp_path, "own_models_c")), str(user_code(tmp_path, "own_models_broken", "1 / 0\n")))
    with pytest.raises(sources.SourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sources.check(name, code)


def test_a_missing_extra_names_it(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else find_spec(name, *a))
    with pytest.raises(sources.SourceError, match=r"pip install 'distkd\[timm\]'"):
        sources.check("timm:resnet18")


def test_a_program_of_the_wrong_width_is_refused(tmp_path):
    network = ModelSpec(f"torchscript:{scripted(tmp_path, classes=5)}", {}, CLASSES, SHAPE).build()
    with pytest.raises(ConfigError, match=r"outputs of shape \[2, 5\].*expected \[2, 10\]"):
        checks.forward("teacher", network, SHAPE, CLASSES)


def test_safetensors_weights_load_strictly(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model = LeNet5(CLASSES)
    safetensors.save_file(model.state_dict(), tmp_path / "w.safetensors")
    loaded = load_weights(LeNet5(CLASSES), str(tmp_path / "w.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    safetensors.save_file({"other.weight": torch.zeros(2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="missing classifier.1.bias.*unexpected other.weight"):
        checks.weights("student.weights", LeNet5(CLASSES), str(tmp_path / "bad.safetensors"))


def test_a_program_moved_unchanged_keeps_its_identity_and_a_changed_one_does_not(tmp_path):
    first = scripted(tmp_path)
    moved = tmp_path / "elsewhere" / "teacher.pt"
    moved.parent.mkdir()
    moved.write_bytes(Path(first).read_bytes())

    def spec(path: Path | str) -> ModelSpec:
        name = f"torchscript:{path}"
        return ModelSpec(name, {}, CLASSES, SHAPE, source=sources.identity(name))

    assert spec(first).identity() == spec(moved).identity()
    moved.write_bytes(moved.read_bytes() + b"\0")
    assert spec(first).identity() != spec(moved).identity()


def test_model_identity_has_a_source_only_when_there_is_one(tmp_path):
    assert "source" not in ModelSpec("lenet5", {}, CLASSES, SHAPE).identity()
    spec = ModelSpec("import:m:Net", {}, CLASSES, SHAPE, source="sha256:ab", code=("/x",))
    assert spec.identity()["source"] == "sha256:ab" and "code" not in spec.identity()


def job(cifar10: Path, tmp_path: Path, teacher: dict, student: dict, code: list[str] | None = None) -> Job:
    raw = {
        "name": "sources",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 200, "val_limit": 100},
        "teacher": teacher,
        "student": {**student, "train": {"batch_size": 50, "augment": False}},
        **({"code": code} if code is not None else {}),
    }
    return Job.prepare(config.parse(raw, "<sources>"), "<sources>")


def test_job_takes_a_program_teacher_and_an_imported_student(cifar10, tmp_path):
    program = scripted(tmp_path)
    code = [str(user_code(tmp_path, "own_models_d"))]
    prepared = job(cifar10, tmp_path, {"name": f"torchscript:{program}"}, {"name": "import:own_models_d:Net"}, code)
    assert prepared.teacher_run() is None  # a program is trained already
    assert prepared.teacher_weights_uri() == str(program)
    assert prepared.student.source == sources.identity("import:own_models_d:Net", code)
    assert prepared.student.code == tuple(code)


@pytest.mark.parametrize(
    ("teacher", "student", "message"),
    [
        ({"name": "nosuchnet"}, {"name": "lenet5"}, "key 'teacher.name': unknown model 'nosuchnet'"),
        ({"name": "resnet9"}, {"name": "import:own_models_e:Missing"}, "key 'student.name': 'import:own_models_e"),
        ({"name": "resnet9"}, {"name": "torchscript:PROGRAM"}, "key 'student.name': .* inference only"),
    ],
)
def test_job_refuses_with_the_key(cifar10, tmp_path, teacher, student, message):
    code = [str(user_code(tmp_path, "own_models_e"))]
    student = {"name": student["name"].replace("PROGRAM", str(scripted(tmp_path)))}
    with pytest.raises(ConfigError, match=message):
        job(cifar10, tmp_path, teacher, student, code)


def test_submit_ships_the_code_and_the_cluster_hashes_it_the_same(cifar10, tmp_path, monkeypatch):
    from distkd import submit

    code = [str(user_code(tmp_path, "own_models_f"))]
    raw = {
        "name": "shipped",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 200},
        "code": code,
        "teacher": {"name": "torchscript:teacher.torchscript.pt"},  # relative: made absolute where it was written
        "student": {"name": "import:own_models_f:Net", "train": {"batch_size": 50, "augment": False}},
    }
    monkeypatch.chdir(tmp_path)
    scripted(tmp_path)
    local = Job.prepare(config.parse(raw, "<local>"))
    working_dir = submit.package(local.config, tmp_path / "working_dir")
    monkeypatch.chdir(working_dir)  # as the head runs the job
    shipped = config.load(submit.JOB_FILE)
    assert shipped.code == [str(working_dir / "code" / "own_models_f.py")]
    assert shipped.teacher.name == f"torchscript:{tmp_path / 'teacher.torchscript.pt'}"
    assert sources.identity(shipped.student.name, shipped.code) == local.student.source
