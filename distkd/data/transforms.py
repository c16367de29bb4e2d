"""Input transforms, applied to uint8 batches on the model's device (cheap to move, fast on a GPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float32, scaled to [0, 1] then standardised per channel."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std

    def identity(self) -> dict:
        return {"normalize": asdict(self)}


def random_crop_flip(images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard CIFAR augmentation: a random crop of the zero-padded image and a random horizontal flip."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flip = torch.rand(n, generator=generator).lt(0.5).tolist()
    crops = [padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(dy, dx))]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flip)])
