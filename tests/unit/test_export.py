"""``distkd export``: a committed run's student as a program of each format, checked against the module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from distkd import cli, export, storage
from distkd.config import ConfigError
from distkd.models.students import LeNet5
from distkd.specs import TrainingRun

MODEL = {"name": "lenet5", "kwargs": {}, "num_classes": 10, "input_shape": [3, 32, 32]}
NORMALIZE = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def run_folder(root: Path, cifar10: Path) -> tuple[str, LeNet5]:
    """A committed run folder as the distill stage leaves it: model.pt, run.json, the marker."""
    run = str(root / "runs" / "student-kd-0123")
    model = LeNet5(10).eval()
    Path(run).mkdir(parents=True)
    torch.save(model.state_dict(), storage.join(run, TrainingRun.WEIGHTS))
    data = {"uri": str(cifar10), "split": "train", "fingerprint": "f", "limit": 100}
    info = {"job": "j", "role": "student-kd", "model": MODEL, "data": data, "normalize": NORMALIZE}
    storage.write_json(storage.join(run, TrainingRun.INFO), info)
    storage.commit(run)
    return run, model


RELOAD = {
    "export": lambda path: torch.export.load(path).module(),
    "torchscript": lambda path: torch.jit.load(path),
}


@pytest.mark.parametrize("fmt", ["export", "torchscript", "onnx"])
def test_each_format_reloads_and_matches(tmp_path, cifar10, fmt):
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx is not installed")
    run, model = run_folder(tmp_path, cifar10)
    record = export.export(run, fmt)
    assert record["max_abs_difference"] <= export.TOLERANCE and record["checked_rows"] == 64
    assert storage.read_json(storage.join(run, f"export-{fmt}.json")) == record
    path = Path(record["file"])
    x = torch.randn(5, 3, 32, 32)  # another batch size than the one it was written with
    with torch.no_grad():
        expected = model(x).numpy()
        got = export.FORMATS[fmt].load(path)(x) if fmt == "onnx" else RELOAD[fmt](path)(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_refused_above_the_tolerance(tmp_path, cifar10):
    """The check is the same for every format: the cheapest shows it (an ONNX program is checked on onnx's pure-Python
    reference evaluator when ONNX Runtime is not installed, seconds for one batch)."""
    run, _ = run_folder(tmp_path, cifar10)
    with pytest.raises(export.ExportError, match="more than the tolerance -1; nothing was written"):
        export.export(run, "torchscript", tolerance=-1.0)
    assert not list(Path(run).glob("export-*.json"))


def test_command_line(tmp_path, cifar10, capsys):
    run, _ = run_folder(tmp_path, cifar10)
    assert cli.main(["export", run, "--format", "torchscript"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    assert cli.main(["export", str(tmp_path / "nothing"), "--format", "export"]) == 2
    assert "not a committed run folder" in capsys.readouterr().err


def test_missing_onnx_is_named(tmp_path, cifar10, monkeypatch):
    run, _ = run_folder(tmp_path, cifar10)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'distkd\[onnx\]'"):
        export.export(run, "onnx")


def test_a_text_run_exports_checked_on_its_own_texts_tokenised(tmp_path, reviews, capsys):
    """A text run's program takes token ids: the check batch is the run's texts through the run's tokenizer."""
    from distkd.data import tokenizer
    from distkd.models.text import TextCNN

    folder = str(tmp_path / "store" / "tokenizers" / "0123")
    texts = [["a small dress that fits", "too long for me", "lovely colour, runs large"]]
    meta = tokenizer.train_into(folder, "wordpiece", 100, 16, lambda: texts)
    model = TextCNN(5, vocab_size=meta["vocab_size"] + 1).eval()
    run = str(tmp_path / "store" / "runs" / "student-kd-4567")
    Path(run).mkdir(parents=True)
    torch.save(model.state_dict(), storage.join(run, TrainingRun.WEIGHTS))
    spec = {"name": "text_cnn", "kwargs": {"vocab_size": meta["vocab_size"] + 1}, "num_classes": 5, "input_shape": [16]}
    data = {"uri": str(reviews), "split": "train", "fingerprint": "f", "limit": 100}
    info = {
        "job": "j",
        "role": "student-kd",
        "model": spec,
        "data": data,
        "inputs": {"tokenizer": folder, "max_length": 16},
    }
    storage.write_json(storage.join(run, TrainingRun.INFO), info)
    storage.commit(run)
    assert cli.main(["export", run, "--format", "torchscript"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    record = storage.read_json(storage.join(run, "export-torchscript.json"))
    assert record["input"] == {"dtype": "int64", "shape": ["N", 16], "inputs": info["inputs"]}
    tokens, _ = export.batch(info)
    assert tokens.shape == (64, 16) and tokens.dtype == torch.int64 and 0 < int(tokens.max()) <= meta["vocab_size"]
    program = torch.jit.load(record["file"])
    with torch.no_grad():
        np.testing.assert_allclose(program(tokens[:5]).numpy(), model(tokens[:5]).numpy(), atol=1e-4)
