"""The teacher replica that runs in each actor of the soft-label pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from distkd.data.transforms import Normalize
from distkd.distill.train import ModelSpec
from distkd.models import load_weights

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TeacherPredictor:
    """Holds one teacher on its device (a GPU when the actor has one); maps decoded batches to logits."""

    def __init__(self, model: ModelSpec, weights: str, normalize: Normalize, dtype: str, precision: str) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_weights(model.build(), weights).to(self.device).eval()
        self.normalize = normalize
        self.dtype = pa.float16() if dtype == "float16" else pa.float32()
        self.amp_dtype = AMP_DTYPES.get(precision) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images = torch.from_numpy(batch["image"]).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.model(self.normalize(images)).float().cpu().numpy()
        flat = pa.array(logits.reshape(-1), pa.float32()).cast(self.dtype)
        return pa.table({"id": batch["id"], "logits": pa.FixedSizeListArray.from_arrays(flat, logits.shape[1])})
