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
