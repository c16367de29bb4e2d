"""Stage 3: every model over the test split on an actor pool; per-block statistics summed exactly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import ray.data
import torch

from distkd import storage
from distkd.data.source import decode_batch
from distkd.data.transforms import Normalize
from distkd.distill.train import ModelSpec
from distkd.evaluate.cost import model_cost
from distkd.evaluate.metrics import block_stats, compute_metrics, sum_stats
from distkd.evaluate.report import write_report
from distkd.job import Job, digest
from distkd.models import load_weights

TEACHER = "teacher"


class Evaluator:
    """All models side by side in one actor, so each student is compared with its teacher on the same batch."""

    def __init__(self, models: dict[str, tuple[ModelSpec, str]], normalize: Normalize) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models = {role: load_weights(spec.build(), weights).to(self.device).eval() for role, (spec, weights) in models.items()}
        self.normalize = normalize

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.normalize(torch.from_numpy(batch["image"]).to(self.device))
        logits = {role: model(x).float().cpu().numpy() for role, model in self.models.items()}
        out = {}
        for i, (role, z) in enumerate(logits.items()):
            teacher = logits.get(TEACHER) if role != TEACHER else None
            out.update({f"m{i}_{key}": v for key, v in block_stats(z, batch["label"], teacher).items()})
        return out


def model_specs(job: Job, weights: dict[str, str]) -> dict[str, tuple[ModelSpec, str]]:
    return {role: (job.teacher if role == TEACHER else job.student, uri) for role, uri in weights.items()}


def evaluate(job: Job, weights: dict[str, str]) -> str:
    """Metrics, costs and the report for each role's weights; returns the committed report folder."""
    models = model_specs(job, weights)
    folder = job.uri("reports", f"{job.config.name}-{digest([job.test.identity(), models])}")
    if storage.is_committed(folder):
        print(f"[evaluate] reusing committed report {folder}", flush=True)
        return folder
    cfg = job.config.evaluate
    stats = job.test.read().map_batches(decode_batch, batch_format="numpy").map_batches(
        Evaluator, fn_constructor_kwargs={"models": models, "normalize": job.normalize},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors), batch_size=cfg.batch_size, batch_format="numpy",
    )
    blocks = list(stats.iter_batches(batch_size=None, batch_format="numpy"))
    results = []
    for i, (role, (spec, uri)) in enumerate(models.items()):
        summed = sum_stats({k.removeprefix(f"m{i}_"): v for k, v in b.items() if k.startswith(f"m{i}_")} for b in blocks)
        cost = model_cost(load_weights(spec.build(), uri), spec.input_shape)
        results.append({"name": f"{spec.name} {role}", "role": role, "weights": uri,
                        "metrics": compute_metrics(summed, job.config.data.class_names), "cost": cost})
    with tempfile.TemporaryDirectory() as local:
        write_report(local, results, title=f"distkd report: {job.config.name}")
        for path in Path(local).iterdir():
            storage.write_bytes(storage.join(folder, path.name), path.read_bytes())
    storage.write_json(storage.join(folder, "metrics.json"), {"job": job.config.name, "split": job.test.identity(), "models": results})
    storage.commit(folder)
    print(f"[evaluate] report: {storage.join(folder, 'report.md')}", flush=True)
    return folder
