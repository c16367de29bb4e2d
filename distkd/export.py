"""``distkd export RUN --format export|torchscript|onnx``: a committed run's model as a program.

The program takes what the model takes (float images normalised with the run's mean and std, or int64 token
ids of the run's tokenizer, recorded beside it) and needs no distkd code to run: ``torch.export.load``,
``torch.jit.load`` or an ONNX runtime. Before it is written into the run's folder its outputs on a batch of the
run's own data, prepared by the run's input kind, are compared with the trained module's; above ``tolerance``
(max absolute difference of the logits) it is refused.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distkd import storage
from distkd.config import ConfigError, DataConfig
from distkd.data import inputs
from distkd.data.kinds import InputKind
from distkd.data.source import Split
from distkd.models import load_weights
from distkd.registry import Registry
from distkd.specs import ModelSpec, TrainingRun
from distkd.tasks import CLASSIFICATION

TOLERANCE = 1e-4
ROWS = 64  # rows of the run's data the program is checked on
RECORD = "export-{format}.json"


class ExportError(RuntimeError):
    """A program whose outputs differ from the trained module's by more than the tolerance."""


@dataclass(frozen=True)
class Format:
    """``write(model, example, path)`` saves the program; ``load(path)`` returns it as images -> logits."""

    file: str  # the program's name in the run's folder
    write: Callable[[nn.Module, torch.Tensor, Path], None]
    load: Callable[[Path], Callable[[torch.Tensor], np.ndarray]]
    needs: str | None = None  # the package it needs, installed by the distkd extra of the same name

    def __call__(self, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        self.write(model, example, path)


FORMATS: Registry[Format] = Registry("export format")


def _batch_dim() -> tuple[dict[int, object]]:
    return ({0: torch.export.Dim.DYNAMIC},)  # any batch size


def _write_export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=_batch_dim()), path)


def _load_export(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    program = torch.export.load(path).module()
    return lambda x: program(x).detach().numpy()


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.jit.save(torch.jit.trace(model, example), path)


def _load_torchscript(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    program = torch.jit.load(path, map_location="cpu").eval()
    return lambda x: program(x).detach().numpy()


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (example,),
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=_batch_dim(),
        external_data=False,  # one file: the weights inside it
    )


def _load_onnx(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """ONNX Runtime when installed, else onnx's reference evaluator (slow, but needs nothing more)."""
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x.numpy()})[0]
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(str(path))
    return lambda x: evaluator.run(None, {"images": x.numpy()})[0]


FORMATS.register("export")(Format("model.pt2", _write_export, _load_export))
FORMATS.register("torchscript")(Format("model.torchscript.pt", _write_torchscript, _load_torchscript))
FORMATS.register("onnx")(Format("model.onnx", _write_onnx, _load_onnx, needs="onnx"))


def trained_model(run: str, code: tuple[str, ...] = ()) -> tuple[nn.Module, dict]:
    """The committed run's module with its weights, and its ``run.json``."""
    if not storage.is_committed(run) or not storage.exists(storage.join(run, TrainingRun.WEIGHTS)):
        raise ConfigError(
            f"{run}: not a committed run folder "
            f"(expected {TrainingRun.WEIGHTS}, {TrainingRun.INFO} and the commit marker)"
        )
    info = storage.read_json(storage.join(run, TrainingRun.INFO))
    m = info["model"]
    task = info.get("task", CLASSIFICATION.name)  # what an hf: model was built for (run.json names any other)
    spec = ModelSpec(m["name"], m["kwargs"], m["num_classes"], tuple(m["input_shape"]), code=code, task=task)
    return load_weights(spec.build(), storage.join(run, TrainingRun.WEIGHTS)).eval(), info


def batch(info: dict, rows: int = ROWS) -> tuple[torch.Tensor, InputKind]:
    """The first ``rows`` rows of the run's training data as the model took them (prepared: decoded or tokenised,
    and put in the model's form by the run's input kind), and that kind."""
    data = info["data"]
    recorded = DataConfig(uri=data["uri"], input_column=data.get("input_column"))  # as Split.identity records it
    split = Split.open(data["uri"], data["split"], min(rows, data["limit"] or rows), inputs.finder(recorded))
    rebuild = inputs.INPUTS[split.input.kind].recorded
    if rebuild is None:
        raise ConfigError(f"{data['uri']}: a run on {split.input.kind} inputs cannot be exported yet")
    kind = rebuild(split, info)
    table = split.read_table(["id", *split.input.columns, "label"]).to_pydict()
    prepared = kind.prepare({k: np.array(v, dtype=object) for k, v in table.items()})
    return kind.model_input({c: torch.from_numpy(prepared[c]) for c in kind.columns}, torch.device("cpu")), kind


def export(run: str, fmt: str, tolerance: float = TOLERANCE, code: tuple[str, ...] = ()) -> dict:
    """Write the run's model as a ``fmt`` program into the run's folder, checked against the module on a
    batch of its data; returns what is recorded beside it (``export-<fmt>.json``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown export format '{fmt}'; known: {', '.join(FORMATS)}")
    target = FORMATS[fmt]
    if target.needs and importlib.util.find_spec(target.needs) is None:
        raise ConfigError(f"--format {fmt}: needs the '{target.needs}' package: pip install 'distkd[{target.needs}]'")
    run = storage.absolute(run.rstrip("/"))
    model, info = trained_model(run, code)
    x, kind = batch(info)
    with torch.no_grad():
        expected = model(x).numpy()
    with tempfile.TemporaryDirectory(prefix="distkd-export-") as folder:
        path = Path(folder) / target.file
        try:
            with torch.no_grad():
                target(model, x[:2], path)
            difference = float(np.abs(target.load(path)(x) - expected).max())
        except Exception as e:  # noqa: BLE001 - what the tracer or exporter refuses in the model, whatever it is
            first = (str(e).strip().splitlines() or [""])[0]
            raise ExportError(
                f"{run}: the model does not export as a {fmt} program ({type(e).__name__}: {first})"
            ) from e
        if not difference <= tolerance:
            raise ExportError(
                f"{run}: the {fmt} program's logits differ from the trained model's by up to {difference:.3g} on "
                f"{len(x)} rows, more than the tolerance {tolerance:g}; nothing was written"
            )
        storage.write_bytes(storage.join(run, target.file), path.read_bytes())
    record = {
        "format": fmt,
        "file": storage.join(run, target.file),
        "model": info["model"],
        "input": {
            "dtype": str(x.dtype).removeprefix("torch."),
            "shape": ["N", *info["model"]["input_shape"]],
            kind.identity_key: info[kind.identity_key],  # images: their mean and std; texts: the tokenizer
        },
        "checked_rows": len(x),
        "max_abs_difference": difference,
        "tolerance": tolerance,
        "torch": torch.__version__,
    }
    storage.write_json(storage.join(run, RECORD.format(format=fmt)), record)
    return record
