"""Input transforms, applied to uint8 batches on the model's device (cheap to move, fast on a GPU).

torch is imported where a transform runs: the data's read tasks unpickle ``Normalize`` with their inputs and
need no torch (see ``data/inputs.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float32, scaled to [0, 1] then standardised per channel."""
        import torch

        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std


PAD = 4  # the standard CIFAR augmentation pads by 4 pixels


def crop_flip(images: torch.Tensor, params: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Per image, the crop at offset (dy, dx) of the zero-padded image, flipped horizontally if
    ``flip``; ``params`` is [N, 3] (dy, dx, flip)."""
    import torch
    import torch.nn.functional as F

    _, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    crops = [padded[i, :, y : y + h, x : x + w] for i, (y, x, _) in enumerate(params.tolist())]
    return torch.stack([c.flip(-1) if f else c for c, (_, _, f) in zip(crops, params.tolist())])


def random_crop_flip(images: torch.Tensor, pad: int = PAD, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard CIFAR augmentation: a random crop of the zero-padded image and a random horizontal flip."""
    import torch

    n = len(images)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n, 1), generator=generator)
    return crop_flip(images, torch.cat([offsets, flips], dim=1), pad)
