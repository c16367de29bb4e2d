"""Tiny Hugging Face text models made in a test: a BERT config saved with ``save_pretrained`` beside a WordPiece
tokenizer trained on a few sentences (no download)."""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "This dress fits well and the fabric is soft.",
    "The top was too small, returned it.",
    "Love the color but the sleeves are long.",
    "Runs large, order a size down.",
    "Beautiful skirt, great for summer!",
    "Poor quality, the seams came apart after one wash.",
]


def tiny_bert(folder: Path, vocab_size: int = 120, layers: int = 2, width: int = 16, weights: bool = True) -> Path:
    """A ``layers``-layer BERT of ``width`` (random weights, saved with ``save_pretrained`` unless not
    ``weights``: then ``config.json`` alone) with a WordPiece tokenizer of at most ``vocab_size`` ids trained on
    ``SENTENCES`` (``tokenizer.json`` with BERT's [CLS] ... [SEP] template)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    config = transformers.BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
    )
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # the same weights in every run of a test
    if weights:
        transformers.BertModel(config).save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def tiny_causal(folder: Path, vocab_size: int = 300, width: int = 16, embedded: int | None = None) -> Path:
    """A 2-layer Llama causal language model of ``width`` (random weights, ``save_pretrained``) with a byte-level BPE
    tokenizer of at most ``vocab_size`` ids trained on ``SENTENCES``, its first id ``<|endoftext|>`` (a document's
    end, as in SmolLM2's); the model embeds ``embedded`` ids (default: the tokenizer's)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    tok.train_from_iterator(SENTENCES, trainer)
    config = transformers.LlamaConfig(
        vocab_size=embedded or tok.get_vocab_size(),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def tiny_gguf(path: Path, folder: Path) -> Path:
    """The ``tiny_causal`` model at ``folder`` as a GGUF file at ``path`` (float32 tensors, its byte-level BPE
    tokenizer as llama.cpp's 'gpt2' one), written with the ``gguf`` package as llama.cpp's converter writes a Llama:
    its tensors renamed, the query and key rows in llama.cpp's rotary order (which transformers' loader undoes)."""
    import json

    import gguf
    import numpy as np
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(folder)
    c = model.config
    tok = json.loads((folder / "tokenizer.json").read_text())
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 1))
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    parts = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names.update(
        (f"model.layers.{i}.{ours}.weight", f"blk.{i}.{theirs}.weight")
        for i in range(c.num_hidden_layers)
        for ours, theirs in parts.items()
    )
    heads = {"attn_q": c.num_attention_heads, "attn_k": c.num_key_value_heads}
    state = model.state_dict()
    for ours, theirs in names.items():
        x = state[ours].numpy().astype(np.float32)
        if n := heads.get(theirs.split(".")[-2]):  # llama.cpp's order of each head's rotary halves
            x = x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        w.add_tensor(theirs, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
