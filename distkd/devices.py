"""The device a Ray task or actor may use: the GPU Ray assigned it, never one it merely sees.

``torch.cuda.is_available()`` says nothing about that in a Ray worker: since Ray 2.60
(``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` off by default) a worker that asked for no GPU keeps the
node's ``CUDA_VISIBLE_DEVICES``, so it sees every GPU, and using one takes a GPU Ray gave another.
"""

from __future__ import annotations

import os

import ray
import torch


def assigned_gpus() -> list[str] | None:
    """The ids of the GPUs Ray assigned to this task or actor; None outside a Ray worker (a driver, a script)."""
    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return [str(i) for i in ray.get_gpu_ids()]


def device() -> torch.device:
    """``cuda:<local index>`` of the first GPU Ray assigned to this worker, else the CPU; outside a Ray worker
    the process has the machine to itself: any GPU. Ray sets ``CUDA_VISIBLE_DEVICES`` to the assigned ids, so
    the local index is their position there (0 unless ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` kept
    the node's list)."""
    ids = assigned_gpus()
    if ids is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not ids:
        return torch.device("cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", visible.split(",").index(ids[0]) if visible else int(ids[0]))


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the 'precision' settings that autocast


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """What ``precision`` (fp32, bf16, fp16) autocasts to on ``device``: bf16 or fp16 on a GPU, else None
    (float32: training and labelling on a CPU stay in full precision)."""
    return AMP_DTYPES.get(precision) if device.type == "cuda" else None
