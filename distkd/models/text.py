"""Text classifiers over token ids [N, L] (0 is padding, masked), built for (num_classes, vocab_size, max_length).

Built like the image models (``num_classes, in_channels, image_size``): ``image_size`` is the sequence length
``L``, ``in_channels`` is unused (1), and ``vocab_size`` comes from the job's tokenizer.
"""

from __future__ import annotations

import torch
from torch import nn

from distkd.data.tokenizer import PAD


class TextTransformer(nn.Module):
    """A Transformer encoder (pre-norm, learned positions) pooled by the mean of the real tokens or a class token."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 128,
        *,
        vocab_size: int,  # the tokenizer's ids and padding: the input kind gives it (TextInput.model_kwargs)
        layers: int = 2,
        dim: int = 128,
        heads: int = 4,
        pooling: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling '{pooling}': expected one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.zeros(1, image_size + 1, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        pad = tokens == PAD
        x = torch.cat([self.cls.expand(len(tokens), -1, -1), self.embed(tokens)], dim=1)
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)  # the class token is never padding
        x = self.norm(self.encoder(x + self.position[:, : x.shape[1]], src_key_padding_mask=pad))
        return self.head(POOLINGS[self.pooling](x, ~pad))


def _mean(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    real = real[:, 1:, None].to(x.dtype)
    return (x[:, 1:] * real).sum(1) / real.sum(1).clamp(min=1)


POOLINGS = {"mean": _mean, "cls": lambda x, real: x[:, 0]}


class TextCNN(nn.Module):
    """Kim (2014): embeddings, parallel 1-D convolutions of several widths, max-pooled over the real tokens."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 128,
        *,
        vocab_size: int,  # the tokenizer's ids and padding: the input kind gives it (TextInput.model_kwargs)
        dim: int = 128,
        filters: int = 100,
        widths: str = "3,4,5",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, int(w), padding=int(w) - 1) for w in widths.split(","))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(filters * len(self.convs), num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        x = self.embed(tokens).transpose(1, 2)  # [N, dim, L]
        # A window that sees only padding counts as 0, which never beats a real window after the ReLU.
        real = (tokens != PAD).float()[:, None]
        pooled = []
        for conv in self.convs:
            w = conv.kernel_size[0]
            seen = nn.functional.max_pool1d(nn.functional.pad(real, (w - 1, w - 1)), w, stride=1)
            h = torch.relu(conv(x)).masked_fill(seen == 0, 0.0)
            pooled.append(h.amax(dim=2))
        return self.head(self.dropout(torch.cat(pooled, dim=1)))
