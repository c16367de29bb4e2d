"""A language model's rows: documents packed into blocks with the next token as each position's target, and the
built-in causal Transformer (causal, tied embeddings)."""

import numpy as np
import pytest
import torch

from distkd.data.blocks import IGNORE, block_ids, pack
from distkd.data.tokenizer import PAD
from distkd.models.registry import MODELS

SEP = 9


def test_documents_are_packed_with_a_separator_and_each_position_targets_the_next_token():
    tokens, following = pack([[1, 2, 3], [4, 5], [6]], length=4, separator=SEP)
    assert tokens.tolist() == [[1, 2, 3, SEP], [4, 5, SEP, 6], [SEP, PAD, PAD, PAD]]
    assert following.tolist() == [[2, 3, SEP, 4], [5, SEP, 6, SEP], [IGNORE] * 4]
    assert tokens.dtype == np.int32 and following.dtype == np.int64


def test_a_stream_that_fills_its_blocks_exactly_has_no_padding_and_only_its_last_token_has_no_target():
    tokens, following = pack([[1, 2, 3]], length=2, separator=SEP)
    assert tokens.tolist() == [[1, 2], [3, SEP]]
    assert following.tolist() == [[2, 3], [SEP, IGNORE]]


def test_a_block_is_named_by_its_tokens_and_targets():
    tokens, following = pack([[1, 2, 3], [1, 2, 3]], length=4, separator=SEP)
    again, _ = pack([[1, 2, 3]], length=4, separator=SEP)
    ids = block_ids(tokens, following)
    assert len(set(ids)) == 2
    assert block_ids(again, np.array([[2, 3, SEP, 1]])) == ids[:1]  # the same block from another stream
    assert block_ids(again, np.array([[2, 3, SEP, IGNORE]])) != ids[:1]  # same tokens, another target


def model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS["lm_transformer"](50, 1, 8, vocab_size=50, layers=1, dim=16, heads=2, **kwargs).eval()


def test_the_causal_transformer_predicts_every_position_from_the_tokens_before_it_alone():
    lm = model()
    tokens = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] % 49) + 1
    with torch.no_grad():
        before, after = lm(tokens), lm(changed)
    assert before.shape == (2, 8, 50)
    assert torch.equal(before[:, :5], after[:, :5]) and not torch.allclose(before[:, 5:], after[:, 5:])


def test_the_causal_transformers_output_layer_is_its_token_embedding():
    lm = model()
    assert not any(p.shape == (50, 16) for name, p in lm.named_parameters() if name != "embed.weight")
    with pytest.raises(ValueError, match="own vocabulary"):
        MODELS["lm_transformer"](10, 1, 8, vocab_size=50)
