"""What the benchmarks share: jobs made from the quick start, a split decoded into tensors, the cached labels
as tensors, one plain PyTorch training loop, synthetic teachers, timing, the machine, and Markdown tables.

Run every benchmark from the repository root (the quick start's paths are relative to it).
"""

from __future__ import annotations

import copy
import io
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import loopback  # noqa: F401  (before Ray is imported: a local instance binds 127.0.0.1)
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
import yaml
from PIL import Image

from distkd import config, labelstore, storage
from distkd.data.source import Split, decode
from distkd.distill.loop import shown, teacher_targets
from distkd.job import Job
from distkd.labels.formats import to_numpy
from distkd.methods.optim import RowSchedule, optimizer
from distkd.models import load_weights, placed
from distkd.specs import ModelSpec, TrainingRun

CPU = torch.device("cpu")  # the benchmarks' plain loops run here, as distkd does without a GPU
QUICKSTART = "jobs/quickstart.yaml"
TEACHERS = {  # the teachers the benchmarks compare: (registry name, kwargs)
    "resnet9-w16": ("resnet9", {"width": 16}),  # the quick start's
    "resnet18": ("resnet18", {"cifar_stem": True}),
    "resnet50": ("resnet50", {}),  # at 224x224 (item 6, on a GPU)
    "vit_b_16": ("torchvision:vit_b_16", {}),  # at 224x224 (issue 22, on a GPU), through the model sources
}
SYNTHETIC_FILE_ROWS = 50_000


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key (nested mappings merged, the rest replaced)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) and key != "kwargs" else value
    return out


def quickstart_job(changes: dict, name: str = "bench") -> Job:
    """The quick start's job with ``changes`` (e.g. ``{"data": {"limit": 2000}, "store": ...}``)."""
    return job_file(QUICKSTART, changes, name)


def job_file(path: str, changes: dict, name: str = "bench") -> Job:
    """The job of the file at ``path`` with ``changes``, as ``quickstart_job``."""
    raw = merged(yaml.safe_load(Path(path).read_text()), {"name": name, **changes})
    return Job.prepare(config.parse(raw, f"{path} with {changes}"))


def scratch_folder(prefix: str) -> str:
    """A new, empty store folder: a benchmark that times a stage must not find its output committed."""
    Path("/tmp/distkd-bench").mkdir(exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp/distkd-bench")


def decoded(split: Split) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The split's rows in use, decoded in this process: ids, uint8 images [N, C, H, W], labels."""
    table = split.read_table(["id", "image", "label"])
    images = torch.from_numpy(np.stack([decode(b) for b in table["image"].to_pylist()]))
    return table["id"].to_pylist(), images, torch.from_numpy(table["label"].to_numpy().copy())


def cached_columns(entry: str, ids: list[str]) -> dict[str, torch.Tensor]:
    """A committed soft-label entry's training columns (as distkd's loop reads them), in the order of ``ids``."""
    info = labelstore.manifest(entry)
    table = pq.read_table([storage.resolve(labelstore.shard_uri(entry, s.file))[1] for s in info.shards])
    position = {sample: i for i, sample in enumerate(table["id"].to_pylist())}
    order = np.array([position[sample] for sample in ids])
    columns = info.format.training_columns(table)
    if info.views:
        columns["views"] = to_numpy(table["views"], np.int64)
    return {name: torch.from_numpy(values[order]) for name, values in columns.items()}


def synthetic_teacher(model: ModelSpec, x: torch.Tensor, spread: float, folder: str) -> str:
    """A randomly initialised teacher whose last linear layer is scaled so that its logits spread like a
    trained one's (standard deviation ``spread`` across classes on the normalised inputs ``x``); returns its
    weights file.
    Throughput, epoch time and label size do not depend on what the teacher learned."""
    torch.manual_seed(0)
    net = model.build().eval()
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        scale = spread / net(x).std(dim=1).mean().item()
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    path = os.path.join(folder, f"{model.name}-{model.num_classes}-synthetic.pt")
    torch.save(net.state_dict(), path)
    return path


def write_split(
    folder: Path,
    split: str,
    rows: int,
    classes: int,
    side: int,
    seed: int,
    image_format: str = "PNG",
    noise: float = 0.2,
) -> None:
    """``rows`` random ``side``x``side`` images with random labels in distkd's layout, in files of
    SYNTHETIC_FILE_ROWS rows. The pixels are 64 images, each encoded once (cheap to write): PNG noise, or
    for JPEG a smooth pattern with ``noise`` of noise in it (0.2: about 12 KB at 224x224; 0.75, saved at
    quality 95 without chroma subsampling: about 110 KB, an ImageNet JPEG's size)."""
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(64):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        if image_format == "JPEG":
            coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side))
            pixels = ((1 - noise) * np.asarray(coarse) + noise * pixels).astype(np.uint8)
        buffer = io.BytesIO()
        large = {"quality": 95, "subsampling": 0} if image_format == "JPEG" and noise > 0.2 else {}
        Image.fromarray(pixels).save(buffer, format=image_format, **large)
        encoded.append(buffer.getvalue())
    count = -(-rows // SYNTHETIC_FILE_ROWS)
    for f in range(count):
        first = f * SYNTHETIC_FILE_ROWS
        n = min(SYNTHETIC_FILE_ROWS, rows - first)
        table = pa.table(
            {
                "id": [f"{split}/{first + i:07d}" for i in range(n)],
                "image": pa.array([encoded[(first + i) % len(encoded)] for i in range(n)], pa.binary()),
                "label": rng.integers(0, classes, n),
            }
        )
        pq.write_table(table, folder / f"{split}-{f:05d}-of-{count:05d}.parquet", row_group_size=5000)


@dataclass
class PlainResult:
    model: torch.nn.Module
    epoch_seconds: list[float] = field(default_factory=list)


def plain_training(
    run: TrainingRun,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    columns: dict[str, torch.Tensor] | None = None,
    teacher: torch.nn.Module | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    epochs: int | None = None,
) -> PlainResult:
    """distkd's per-batch code (``shown``, the input kind's ``model_input``, the task's ``loss``, the learning-rate
    schedule) in one process without Ray or DDP, over tensors held in memory: ``inputs``, the kind's prepared columns
    (``{"image": images}``), ``labels`` the task's targets. ``columns``: cached soft labels (see ``cached_columns``);
    ``teacher``: online distillation instead, the teacher run on exactly the inputs the student is shown. Each epoch
    validates on ``val`` (images), as distkd's loop does."""
    torch.set_num_threads(max(1, int(run.resources.cpus_per_worker)))
    torch.manual_seed(run.train.seed)
    model = placed(run.model.build(), CPU)  # the layout distkd's loop trains in
    opt = optimizer(model, run.train)
    scheduler = RowSchedule(opt, run.train, len(labels))
    generator = torch.Generator().manual_seed(run.train.seed * 1000)
    result, size = PlainResult(model), run.train.batch_size
    for _ in range(epochs or run.train.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(labels) - size + 1, size):
            idx = order[i : i + size]
            batch = {k: v[idx] for k, v in (inputs | (columns or {})).items()}
            batch[run.task.target] = labels[idx]
            shown_inputs, view = shown(run, batch, generator)
            x = run.inputs.model_input(shown_inputs, CPU)
            if teacher is not None:
                with torch.no_grad():
                    batch["teacher_logits"] = teacher(x)
            targets = teacher_targets(batch, view, run.views, CPU)
            loss = run.task.loss(run.distill, model(x), labels[idx], targets, scheduler.done / len(labels))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step(len(idx))
        if val is not None:
            accuracy(model, *val, run)
        result.epoch_seconds.append(time.perf_counter() - started)
    return result


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, run: TrainingRun) -> float:
    model.eval()
    correct = sum(
        (model(run.inputs.normalize(images[i : i + 1000])).argmax(1) == labels[i : i + 1000]).sum().item()
        for i in range(0, len(labels), 1000)
    )
    return correct / len(labels)


def loaded(model: ModelSpec, weights: str) -> torch.nn.Module:
    return placed(load_weights(model.build(), weights), CPU).eval()


@contextmanager
def timed() -> Iterator[dict]:
    """``with timed() as t: ...`` then ``t["seconds"]`` (wall) and ``t["driver_cpu"]`` (this process's CPU
    seconds) and ``t["machine_cpu"]`` (CPU seconds every process on the machine used meanwhile)."""
    out: dict = {}
    wall, cpu, machine = time.perf_counter(), _own_cpu(), machine_cpu_seconds()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - wall
        out["driver_cpu"] = _own_cpu() - cpu
        out["machine_cpu"] = machine_cpu_seconds() - machine


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (user + nice + system + irq), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def start_ray() -> None:
    """Start (or join) Ray before any timing, so that no figure includes Ray's start-up."""
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def machine() -> str:
    """The machine and the moment, for the header of every result."""
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU in use"
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory:.0f} GiB, {gpu}; torch {torch.__version__}, "
        f"ray {ray.__version__}; commit {commit or '?'}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average (1, 5, 15 min) {load}"
    )


def header(title: str) -> None:
    """The command that runs this benchmark, and the machine, above its tables."""
    command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    print(f"\n## {title}\n\n`{command}`\n\n{machine()}\n", flush=True)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table; numbers right-aligned."""

    def cell(v: object) -> str:
        return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    align = ["---:" if isinstance(v, int | float) else "---" for v in rows[0]] if rows else ["---"] * len(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
