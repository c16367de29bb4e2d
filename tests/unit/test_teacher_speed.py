"""Issue 22 without Ray: decoding where the teacher runs (nvJPEG's logic exercised through torchvision's CPU
decoder, the same call), its per-image fallback to Pillow, the one-batch prefetch in the teacher actor, and
``softlabels.compile``."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image

from distkd import config
from distkd.data import gpu_decode
from distkd.data.inputs import ImageInput
from distkd.data.source import PATH, DataError, decode_batch
from distkd.data.transforms import Normalize
from distkd.labels.formats import Format
from distkd.models import weights_hash
from distkd.softlabels.teacher import TeacherPredictor
from distkd.softlabels.writer import ShardWriter
from distkd.specs import ModelSpec, Weights

SHAPE = (3, 16, 16)
IMAGES = ImageInput("image", (3, 32, 32), Normalize((0.5,) * 3, (0.25,) * 3))
CPU = torch.device("cpu")


def encoded(seed: int, fmt: str = "JPEG", size: int = 16, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def batch(images: list[bytes]) -> dict[str, np.ndarray]:
    n = len(images)
    column = np.empty(n, dtype=object)
    column[:] = images
    return {"id": np.array([f"r{i}" for i in range(n)]), "image": column, "label": np.zeros(n, np.int64),
            PATH: np.array(["train-0.parquet"] * n)}  # fmt: skip


def pillow(rows: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(decode_batch(rows, SHAPE)["image"])


def test_the_device_decoder_matches_pillow_on_jpegs_and_sends_the_rest_to_pillow(monkeypatch):
    rows = batch([encoded(0), encoded(1, "PNG"), encoded(2), encoded(3, mode="CMYK"), encoded(4, "PNG")])
    seen = []
    monkeypatch.setattr(gpu_decode, "decode_batch", lambda b, *a: seen.append(list(b["id"])) or decode_batch(b, *a))
    images = gpu_decode.nvjpeg(rows, SHAPE, CPU)
    assert images.dtype == torch.uint8 and images.shape == (5, *SHAPE)
    assert seen == [["r1", "r4"]]  # the PNGs alone; the CMYK JPEG decodes (to RGB) in the batched call here
    assert (images.int() - pillow(rows).int()).abs().max() <= 1  # libjpeg-turbo both ways


def test_a_batch_nvjpeg_refuses_is_decoded_one_by_one_and_what_fails_goes_to_pillow(monkeypatch):
    real, cmyk = torchvision.io.decode_jpeg, encoded(1, mode="CMYK")

    def nvjpeg_like(data, **kwargs):  # nvJPEG decodes a list all or nothing, and no CMYK JPEG
        if any(bytes(d.numpy()) == cmyk for d in data):
            raise RuntimeError("nvjpegDecode: unsupported colour space")
        return real(data, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", nvjpeg_like)
    seen = []
    monkeypatch.setattr(gpu_decode, "decode_batch", lambda b, *a: seen.append(list(b["id"])) or decode_batch(b, *a))
    rows = batch([encoded(0), cmyk, encoded(2)])
    images = gpu_decode.nvjpeg(rows, SHAPE, CPU)
    assert seen == [["r1"]]
    assert (images.int() - pillow(rows).int()).abs().max() <= 1


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"\xff\xd8\xff\xe0 not a jpeg", "row id 'r1': not an image Pillow can decode"),
        (encoded(1, size=20), "row id 'r1': image is 20x20 pixels, expected 16x16"),
    ],
)
def test_a_row_neither_decoder_takes_is_named(image, message):
    with pytest.raises(DataError, match=f"train-0.parquet: {message}"):
        gpu_decode.nvjpeg(batch([encoded(0), image]), SHAPE, CPU)


def test_the_teachers_device_chooses_the_decoder():
    assert gpu_decode.decoder(torch.device("cuda", 0)) is gpu_decode.nvjpeg
    assert gpu_decode.decoder(CPU) is gpu_decode.pillow


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_nvjpeg_on_the_gpu_is_close_to_pillow():
    rows = batch([encoded(i) for i in range(8)] + [encoded(8, "PNG")])
    images = gpu_decode.nvjpeg(rows, SHAPE, torch.device("cuda"))
    assert images.is_cuda and (images.cpu().float() - pillow(rows).float()).abs().mean() < 2


def test_the_actor_decodes_the_next_batch_while_the_teacher_runs_this_one():
    started = [threading.Event() for _ in range(3)]

    def on_device(rows, *_):
        started[int(rows["id"][0])].set()
        return {"image": rows["image"]}

    writer = object.__new__(ShardWriter)
    writer.ahead, writer.inputs, writer.decoders = ThreadPoolExecutor(1), SimpleNamespace(on_device=on_device), None
    writer.teacher = SimpleNamespace(device=CPU)
    batches = [{"id": np.array([str(i)]), "image": np.full(1, i)} for i in range(3)]
    for i, decoded in enumerate(writer.decoded(batches)):
        assert decoded["image"][0] == i
        if i + 1 < len(batches):  # while batch i is in the teacher's hands, batch i + 1 is being decoded
            assert started[i + 1].wait(timeout=10)
    assert list(writer.decoded([])) == []


@pytest.fixture
def weights(tmp_path) -> Weights:
    model = ModelSpec("lenet5", {}, 10, (3, 32, 32))
    path = tmp_path / "lenet.pt"
    torch.save(model.build().state_dict(), path)
    return Weights(model, str(path), weights_hash(str(path)))


@pytest.mark.parametrize("compile", [False, True])
def test_compile_wraps_the_teacher_and_times_its_first_batch_once(weights, monkeypatch, compile):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    teacher = TeacherPredictor(weights, IMAGES, Format("dense", "float16"), compile=compile)
    rows = {"id": np.array(["a", "b"]), "image": torch.zeros((2, 3, 32, 32), dtype=torch.uint8)}  # a device tensor
    assert len(teacher(rows)) == 2
    first = teacher.compile_seconds
    teacher(rows)
    assert len(compiled) == int(compile) and (first is not None) == compile and teacher.compile_seconds == first
    writer = object.__new__(ShardWriter)
    writer.teacher, writer.compile_reported = teacher, False
    assert [writer.compiled(), writer.compiled()] == [first or 0.0, 0.0]  # in the first unit's record alone


def test_compile_is_a_softlabels_key_of_its_type():
    assert config.SoftLabelConfig(compile=True).compile and not config.SoftLabelConfig().compile
    with pytest.raises(ValueError, match="compile"):
        config.SoftLabelConfig(compile="fast")


def test_the_benchmarks_limits_table_runs_here_on_tiny_sizes(tmp_path, monkeypatch):
    """What ``teacher_throughput.py --gpu`` prints beside the stage, on the CPU: the forward-only limit and
    each decoder alone (on a GPU the same code runs on the device: benchmarks/gpu_run.sh)."""
    monkeypatch.syspath_prepend("benchmarks")
    from common import quickstart_job, write_split
    from teacher_throughput import limits

    for split, seed in (("train", 0), ("test", 1)):
        write_split(tmp_path, split, 40, 10, 32, seed, "JPEG", noise=0.75)
    net = ModelSpec("lenet5", {}, 10, (3, 32, 32)).build()
    torch.save(net.state_dict(), tmp_path / "lenet.pt")
    data = {"uri": str(tmp_path), "num_classes": 10, "class_names": None, "limit": 40, "val_limit": 16}
    teacher = {"name": "lenet5", "kwargs": {}, "weights": str(tmp_path / "lenet.pt")}
    changes = {"data": data, "teacher": teacher, "stages": ["softlabels"], "softlabels": {"batch_size": 16}}
    job = quickstart_job({**changes, "store": str(tmp_path)})
    text = limits(job.softlabel_spec(teacher["weights"]), 40)
    assert "forward only" in text and "decode only: pillow" in text and "decode only: nvjpeg" in text
    rates = [float(line.rsplit("|", 2)[1].replace(",", "")) for line in text.splitlines()[2:]]
    assert len(rates) == 3 and min(rates) > 0
