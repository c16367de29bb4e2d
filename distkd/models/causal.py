"""A small causal Transformer language model over token ids [N, L] -> next-token logits [N, L, V].

Built like the other models (``num_classes, in_channels, image_size``): the classes are the vocabulary's tokens,
``image_size`` is the block length ``L`` (learned positions), ``in_channels`` is unused (1), and ``vocab_size``
comes from the tokenizer. The output layer is the token embedding itself (tied, Press & Wolf 2017): a small
student spends no parameters on a second vocabulary-sized matrix.
"""

from __future__ import annotations

import torch
from torch import nn


class CausalTransformer(nn.Module):
    """Pre-norm Transformer blocks under a causal mask, learned positions, tied input and output embeddings."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 128,
        *,
        vocab_size: int,  # the tokenizer's ids: the input kind gives it
        layers: int = 2,
        dim: int = 128,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes != vocab_size:
            raise ValueError(f"a language model predicts its own vocabulary: {num_classes} classes, {vocab_size} ids")
        self.embed = nn.Embedding(vocab_size, dim)  # padding: only after a block's real tokens, which never see it
        self.position = nn.Embedding(image_size, dim)
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        length = tokens.shape[1]
        x = self.embed(tokens) + self.position(torch.arange(length, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        h = self.norm(self.blocks(x, mask=mask, is_causal=True))
        return h @ self.embed.weight.T
