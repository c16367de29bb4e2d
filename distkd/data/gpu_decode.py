"""Decoding where the teacher runs: JPEG bytes to uint8 [N, C, H, W] on the device with batched nvJPEG
(``torchvision.io.decode_jpeg`` on a list, ``device="cuda"``), Pillow on the CPU for what nvJPEG cannot
decode (PNG, CMYK JPEG, corrupt bytes), and the CPU path's DataError, naming the row, when neither can.

On a GPU, decoding with Pillow is what the teacher waits for (benchmarks/RESULTS.md, item 6). Images keep
the CPU path's contract: every image decodes to the job's shape, else the row is refused; normalising
stays with the teacher (``Normalize`` on the device).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
import torch

from distkd.data.source import decode_batch

JPEG_MAGIC = b"\xff\xd8\xff"  # SOI then a marker: what nvJPEG may decode; anything else goes to Pillow
# torchvision 0.29 deprecates its decoders for TorchCodec's, which has no batched nvJPEG call yet
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
Decoder = Callable[[dict[str, np.ndarray], tuple[int, int, int], torch.device, Executor | None], torch.Tensor]


def host_to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A decoded uint8 batch on ``device``: to a GPU from pinned memory, without blocking the caller's stream."""
    tensor = torch.from_numpy(images)
    return tensor if device.type != "cuda" else tensor.pin_memory().to(device, non_blocking=True)


def pillow(
    batch: dict[str, np.ndarray], shape: tuple[int, int, int], device: torch.device, pool: Executor | None = None
) -> torch.Tensor:
    """The CPU path: Pillow on ``pool``'s threads (``decode_batch``), then the batch to ``device``."""
    return host_to_device(decode_batch(batch, shape, pool)["image"], device)


def nvjpeg(
    batch: dict[str, np.ndarray], shape: tuple[int, int, int], device: torch.device, pool: Executor | None = None
) -> torch.Tensor:
    """The batch's JPEGs decoded together on ``device``; the rest (and each JPEG that did not decode to
    ``shape``) by ``pillow``, which names the row of one neither could decode."""
    images = batch["image"]
    jpegs = [i for i, data in enumerate(images) if bytes(data[:3]) == JPEG_MAGIC]
    out = torch.empty((len(images), *shape), dtype=torch.uint8, device=device)
    decoded = _decode_jpegs([images[i] for i in jpegs], shape[0], device)
    done = set()
    for i, image in zip(jpegs, decoded):
        if image is not None and tuple(image.shape) == tuple(shape):
            out[i] = image
            done.add(i)
    if rest := [i for i in range(len(images)) if i not in done]:
        out[torch.tensor(rest, device=device)] = pillow({k: v[rest] for k, v in batch.items()}, shape, device, pool)
    return out


def _decode_jpegs(data: list[bytes], channels: int, device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG decoded on ``device``, all in one call; if that call fails (nvJPEG decodes a batch all or
    nothing), one by one, None for each that does not decode."""
    from torchvision.io import ImageReadMode, decode_jpeg  # only where a GPU decodes: heavy to import

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    if not encoded:
        return []
    try:
        return list(decode_jpeg(encoded, mode=mode, device=device))
    except RuntimeError:
        return [_one(decode_jpeg, e, mode, device) for e in encoded]


def _one(decode: Callable, encoded: torch.Tensor, mode: object, device: torch.device) -> torch.Tensor | None:
    try:
        return decode([encoded], mode=mode, device=device)[0]
    except RuntimeError:
        return None


DECODERS: dict[str, Decoder] = {"cuda": nvjpeg, "cpu": pillow}  # by the type of the teacher's device


def decoder(device: torch.device) -> Decoder:
    """nvJPEG on a GPU, Pillow anywhere else (the CPU path unchanged)."""
    return DECODERS.get(device.type, pillow)
