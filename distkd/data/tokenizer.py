"""Tokenisers that need no download: trained once on the training split, or a saved one (``hf:<folder>``, a folder
holding ``tokenizer.json``, or ``hf:<file>.gguf``, whose tokenizer transformers reads from the file; either may be
``package:<module>/<path>``, inside an installed package).

A trained tokeniser is an output in the store like any other, named by what it is made of (the training
split's identity, the text column and the settings): ``<store>/tokenizers/<hash>/tokenizer.json``, with
``meta.json`` (vocabulary size, rows, how many were longer than ``max_length``) and the commit marker
written last. Every stage and every job with the same data and settings reads the same one.

Token ids are the tokeniser's own plus one, so that id 0 means padding whatever the tokeniser
calls its tokens (a saved tokeniser may well have a real token at 0); models mask id 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distkd import packages, storage
from distkd.hashing import digest
from distkd.registry import Registry

HF = "hf:"  # a saved tokenizer: hf:<folder holding tokenizer.json>, or hf:<model file>.gguf
FILE, META = "tokenizer.json", "meta.json"
GGUF = ".gguf"
SPECIALS = ["[PAD]", "[UNK]"]
PAD = 0  # the id of padding in the token ids the models see
TRAIN_BATCH = 1_000  # texts per batch fed to the trainer and counted for truncation


class TokenizerError(ValueError):
    """A tokenizer that cannot be used: a saved one that does not load, unknown settings."""


TRAINERS: Registry[Callable] = Registry("tokenizer")


@TRAINERS.register("wordpiece")
def wordpiece(vocab_size: int):
    """BERT's WordPiece on lower-cased, accent-stripped text split at whitespace and punctuation."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)


@TRAINERS.register("bpe")
def bpe(vocab_size: int):
    """Byte-level BPE (GPT-2's): no unknown tokens, case kept."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    return tok, trainer


def check_name(name: str) -> str:
    """``name`` if it is a trainer's name or ``hf:<folder>``, else a ``ValueError`` saying why."""
    if name.startswith(HF) and len(name) > len(HF):
        return name
    if name not in TRAINERS:
        raise ValueError(f"unknown tokenizer '{name}'; known: {', '.join(TRAINERS)}, or hf:<folder>")
    return name


def smallest(name: str, texts: list[str]) -> int:
    """The fewest tokens a ``name`` tokenizer trained on ``texts`` holds, whatever its ``vocab_size``: its special
    tokens and its alphabet (the trainer's initial one, byte-level BPE's 256 bytes, and every character of the
    pre-tokenized words, again with the continuing-subword prefix, WordPiece's '##', where it continues a word).
    Normalised and pre-tokenized once per distinct whitespace-separated token, not per text."""
    tok, trainer = TRAINERS[name](len(SPECIALS))
    text = " ".join(set(" ".join(texts).split()))
    if tok.normalizer is not None:
        text = tok.normalizer.normalize_str(text)
    first, rest = set(), set()
    for word, _ in tok.pre_tokenizer.pre_tokenize_str(text):
        first.add(word[0])
        rest.update(word[1:])
    alphabet = set(trainer.initial_alphabet) | first | rest
    prefix = trainer.continuing_subword_prefix
    continuing = {prefix + c for c in rest} if prefix else set()
    return len(SPECIALS) + len(alphabet) + len(continuing - alphabet)


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer file in the store (or a saved folder) and the fixed length rows are padded or cut to."""

    uri: str  # the tokenizer.json
    max_length: int
    vocab_size: int  # ids the models see: the tokenizer's vocabulary + 1 (0 is padding)
    specials: bool = False  # a model's own: its special tokens added ([CLS] ... [SEP]), kept when a text is cut

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """int32 ids [N, max_length] (0-padded), int32 lengths [N], bool truncated [N]: in Rust, many texts at
        once (called in Ray Data tasks, never row by row on the driver)."""
        if self.specials:
            encodings = _load_truncating(self.uri, self.max_length).encode_batch(texts, add_special_tokens=True)
            cut = [bool(e.overflowing) for e in encodings]
        else:
            encodings = _load(self.uri).encode_batch(texts, add_special_tokens=False)
            cut = [len(e.ids) > self.max_length for e in encodings]
        ids = np.zeros((len(texts), self.max_length), dtype=np.int32)
        lengths = np.empty(len(texts), dtype=np.int32)
        for i, e in enumerate(encodings):
            n = min(len(e.ids), self.max_length)
            ids[i, :n] = np.asarray(e.ids[:n], dtype=np.int32) + 1
            lengths[i] = n
        return ids, lengths, np.array(cut, dtype=bool)


@functools.lru_cache(maxsize=4)
def _load(uri: str):
    """The tokenizer at ``uri`` (a ``tokenizer.json``, or a ``.gguf`` file's), once per process (each Ray worker
    loads it at its first batch)."""
    from tokenizers import Tokenizer as HFTokenizer

    return _gguf_tokenizer(uri) if uri.endswith(GGUF) else HFTokenizer.from_str(storage.read_bytes(uri).decode())


def _gguf_tokenizer(uri: str):
    """The tokenizer inside the GGUF file at ``uri``, as transformers converts it (the 'gguf' extra); a remote file is
    copied to a local one first."""
    import tempfile

    from transformers import AutoTokenizer

    local = storage.absolute(uri)
    if storage.is_remote(uri):
        local = f"{tempfile.mkdtemp(prefix='distkd-gguf-')}/{uri.rsplit('/', 1)[-1]}"
        Path(local).write_bytes(storage.read_bytes(uri))
    folder, _, name = local.rpartition("/")
    return AutoTokenizer.from_pretrained(folder, gguf_file=name).backend_tokenizer


@functools.lru_cache(maxsize=4)
def _load_truncating(uri: str, max_length: int):
    """The tokenizer at ``uri`` as its model reads with it: cut to ``max_length`` ids with its special tokens kept
    (the tokenizer's truncation), unpadded (``encode`` pads with 0)."""
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_str(_load(uri).to_str())  # a copy: the shared one keeps its own settings
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def saved(where: str, max_length: int, specials: bool = False) -> Tokenizer:
    """The tokenizer saved at ``where``: a folder's ``tokenizer.json`` (as ``save_pretrained`` writes it), or a
    ``.gguf`` file's; ``package:<module>/<path>`` inside an installed package. A ``TokenizerError`` saying why when
    it does not load. ``specials``: as the model saved with it reads (its special tokens added)."""
    try:
        where = packages.path(where) if packages.named(where) else storage.absolute(where)
    except packages.PackageError as e:
        raise TokenizerError(str(e)) from None
    uri = where if where.endswith(GGUF) else storage.join(where, FILE)
    try:
        vocab = _load(uri).get_vocab_size()
    except Exception as e:  # noqa: BLE001 - missing file, bad JSON, unknown model type: all mean unusable
        raise TokenizerError(f"{where}: no tokenizer that loads ({type(e).__name__}: {e})") from None
    return Tokenizer(uri, max_length, vocab + 1, specials)


def location(store: str, identity: dict) -> str:
    """``<store>/tokenizers/<hash of the data's identity, the column and the settings>``."""
    return storage.join(store, "tokenizers", digest(identity, length=32))


def trained(folder: str, max_length: int, vocab_size: int) -> Tokenizer:
    """The tokenizer committed in ``folder`` (see ``train_into``); ids the models see: ``vocab_size`` + 1."""
    return Tokenizer(storage.join(folder, FILE), max_length, vocab_size + 1)


def train_into(folder: str, name: str, vocab_size: int, max_length: int, texts: Callable[[], list[list[str]]]) -> dict:
    """Train the ``name`` tokenizer on the batches of ``texts()`` and commit it in ``folder`` (create-if-absent:
    of two trainers racing, the first one's file stays); returns its ``meta.json``. Runs in one Ray task."""
    if storage.is_committed(folder):
        return storage.read_json(storage.join(folder, META))
    tok, trainer = TRAINERS[name](vocab_size)
    batches = texts()
    tok.train_from_iterator((t for batch in batches for t in batch), trainer=trainer)
    storage.publish(storage.join(folder, FILE), tok.to_str().encode())
    # What this folder holds, not the tokenizer just trained: another writer's may have been published first.
    kept = Tokenizer(storage.join(folder, FILE), max_length, vocab_size + 1)
    truncated = sum(int(kept.encode(batch)[2].sum()) for batch in batches)
    meta = {
        "name": name,
        "vocab_size": _load(kept.uri).get_vocab_size(),
        "max_length": max_length,
        "rows": sum(len(b) for b in batches),
        "truncated": truncated,
    }
    storage.publish(storage.join(folder, META), storage.encode_json(meta))
    storage.commit(folder)
    return storage.read_json(storage.join(folder, META))
