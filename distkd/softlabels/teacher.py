"""The teacher replica that runs in each actor of the soft-label pool."""

from __future__ import annotations

import functools
import time

import numpy as np
import pyarrow as pa
import torch

from distkd import devices
from distkd.data.kinds import InputKind
from distkd.data.transforms import PAD, crop_flip
from distkd.labels.formats import Format, fixed_list
from distkd.labels.views import PARAMS, view_params
from distkd.models import placed
from distkd.models.columns import ColumnModel, model_input
from distkd.specs import Weights


class TeacherPredictor:
    """Holds one teacher on its device (the GPU Ray assigned the actor, if any); maps prepared batches to
    the stored columns: the logits of the clean input, or of each of ``views`` recorded views (images only:
    views are refused for other inputs before work)."""

    def __init__(
        self,
        teacher: Weights,
        inputs: InputKind,
        fmt: Format,
        views: int = 0,
        view_seed: int = 0,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        self.device, self.weights, self.compile = devices.device(), teacher, compile
        self.compile_seconds: float | None = None  # the first batch's forward, which compiles (``compile`` only)
        self.inputs, self.fmt, self.views, self.view_seed = inputs, fmt, views, view_seed
        self.amp_dtype = devices.autocast_dtype(precision, self.device)

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        """Loaded at the first batch, not in the constructor: an error there (weights that changed since the
        job hashed them) reaches the driver as the error itself, not as the text of a dead actor. ``compile``
        applies to PyTorch teachers: a booster (a ``ColumnModel``) runs as its library runs it."""
        model = placed(self.weights.load(), self.device).eval()
        return torch.compile(model) if self.compile and not isinstance(model, ColumnModel) else model

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray | torch.Tensor]) -> pa.Table:
        """``batch``: the ids and the input kind's columns (``prepare``'s), NumPy arrays or tensors (already on
        the device, from ``on_device``)."""
        rows = len(batch["id"])
        columns = {"id": pa.array(batch["id"], pa.string())}
        if self.views:
            params = torch.from_numpy(view_params(list(batch["id"]), self.views, PAD, self.view_seed))
            images = torch.as_tensor(batch["image"])
            views = [self.logits({"image": crop_flip(images, params[:, v])}) for v in range(self.views)]
            logits = torch.stack(views, dim=1)
            columns["views"] = fixed_list(params.reshape(rows, self.views * PARAMS).numpy(), pa.int16())
        else:  # [N, 1, C] of one class a row, [N, L, V] of a language model: its positions where views would be
            logits = self.logits(batch)
            logits = logits.reshape(rows, -1, logits.shape[-1])
        return pa.table({**columns, **self.fmt.columns(logits)})

    def logits(self, batch: dict[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
        """The teacher's logits for ``batch``: the kind's prepared columns (and the raw ones, which a
        ``ColumnModel`` reads)."""
        x = model_input(self.model, self.inputs, batch, self.device)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            started = time.perf_counter()
            logits = self.model(x).float().cpu()
        if self.compile and self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - started
        return logits
