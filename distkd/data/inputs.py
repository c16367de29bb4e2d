"""Input kinds: what a split's input column becomes, in one place per kind.

Each kind is one entry of ``INPUTS`` (a ``kinds.Kind``): how it finds its input in a shard's schema (image: a
column of encoded bytes, ``image`` unless ``data.input_column`` names another; text: a column of strings, ``text``;
tabular: the feature columns ``data.features`` lists, else every column beside id and label), its settings under
``data`` (text: ``tokenizer``; tabular: ``features``), and how it is built. The ``InputKind`` it builds says
everything the stages need about the input, so that they call the kind instead of branching on it:

| | image | text |
| --- | --- | --- |
| ``prepare`` (Ray Data tasks) | decode: uint8 [N, C, H, W] ``image`` | tokenise: int32 [N, L] ``tokens`` |
| ``on_device`` (teacher actors) | decode there: batched nvJPEG on a GPU | tokenise, then copy |
| ``shape`` (what models are built for) | (C, H, W) | (L,), with ``vocab_size`` in the model's kwargs |
| ``model_input`` (on the device) | normalise to float32 | ids as int64; 0 is padding |
| ``augments`` (views, crop and flip) | yes | no: refused before work |
| ``identity_key`` (in every output's identity) | ``normalize`` (image keys as before) | ``inputs`` |

The tabular kind (``data/tabular.py``) encodes its columns to float32 [N, F] ``features`` through statistics of
the training split; its shape is (F,), with ``cardinalities`` and ``numeric`` in the model's kwargs.

``finder`` finds a split's kind, ``settings`` validates the kinds' settings a job gives, ``for_data`` builds
the training split's kind.

torch is imported in the methods that run on a device (``on_device``, ``example``): Ray Data's tasks unpickle
a kind to ``prepare`` rows, with numpy alone, and a task that imports torch spends 2 s of CPU on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field, field_validator

from distkd import console, content, storage
from distkd.config import MAX_LENGTH, ConfigError, DataConfig, Strict, validated
from distkd.data import tokenizer as tokenizers
from distkd.data.blocks import DocumentBlocks
from distkd.data.errors import DataError
from distkd.data.kinds import STRINGS, InputKind, Kind, OneColumn
from distkd.data.places import row
from distkd.data.source import Finder, Input, Split, decode_batch, image_shape
from distkd.data.tabular import TABULAR
from distkd.data.transforms import Normalize
from distkd.registry import Registry

if TYPE_CHECKING:
    import torch

INPUTS: Registry[Kind] = Registry("input kind")
MAX_VOCAB_SIZE = 1_000_000  # a text model's embedding is allocated from it before anything reads the data


@dataclass(frozen=True)
class ImageInput:
    """Encoded images decoded to ``shape`` in CPU tasks and normalised on the device."""

    name: ClassVar[str] = "image"
    columns: ClassVar[tuple[str, ...]] = ("image",)
    augments: ClassVar[bool] = True
    identity_key: ClassVar[str] = "normalize"
    column: str
    image_shape: tuple[int, int, int]
    normalize: Normalize

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image_shape

    def prepare(self, batch: dict[str, np.ndarray], pool: Executor | None = None) -> dict[str, np.ndarray]:
        return decode_batch(batch, self.image_shape, pool, self.column)

    def on_device(self, batch: dict[str, np.ndarray], device: torch.device, pool: Executor) -> dict[str, torch.Tensor]:
        from distkd.data import gpu_decode

        encoded = {**batch, "image": batch[self.column]}
        return {"image": gpu_decode.decoder(device)(encoded, self.image_shape, device, pool)}

    def model_input(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        return self.normalize(batch["image"].to(device, non_blocking=True))

    def example(self, rows: int) -> dict[str, torch.Tensor]:
        import torch

        return {"image": torch.zeros(rows, *self.image_shape, dtype=torch.uint8)}

    def row_bytes(self) -> int:
        return math.prod(self.image_shape)

    def model_kwargs(self) -> dict:
        return {}

    def identity(self) -> dict:
        return dataclasses.asdict(self.normalize)  # {mean, std}: image keys as before input kinds

    def pending(self) -> tuple[str, str] | None:
        return None

    def ready(self) -> None:
        pass  # nothing to make

    def check(self, split: Split) -> None:
        pass  # an image that does not decode is found by the task that decodes it (a DataError)


def image_input(split: Split, data: DataConfig, settings: None, store: str) -> ImageInput:
    shape = image_shape(split, data.channels)
    if not len(data.mean) == len(data.std) == shape[0]:
        raise ConfigError(
            f"keys 'data.mean' and 'data.std' need {shape[0]} values (one per channel; "
            f"'data.channels' sets how many the images are decoded to)"
        )
    (column,) = split.input.columns
    return ImageInput(column, shape, Normalize(tuple(data.mean), tuple(data.std)))


def recorded_images(split: Split, info: dict) -> ImageInput:
    """The image kind a run was trained with, from its run.json."""
    norm = info[ImageInput.identity_key]
    (column,) = split.input.columns
    return ImageInput(column, tuple(info["model"]["input_shape"]), Normalize(tuple(norm["mean"]), tuple(norm["std"])))


IMAGE = Kind(
    OneColumn((pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view), unnamed="image"),
    image_input,
    "encoded image bytes",
    column="image",
    recorded=recorded_images,
)


class TokenizerConfig(Strict):
    """A text split's tokenizer (``data.tokenizer``): trained on the training split once (wordpiece, bpe), or
    hf:<folder>."""

    name: str = "wordpiece"
    vocab_size: int = Field(default=8000, gt=2, le=MAX_VOCAB_SIZE)  # of a trained one
    max_length: int = Field(default=128, gt=0, le=MAX_LENGTH)  # tokens per row: longer texts are cut (and counted)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return tokenizers.check_name(storage.validate_named(name))


@dataclass(frozen=True)
class TextInput:
    """Strings tokenised to fixed-length ids in CPU tasks; the tokenizer is trained once (``ready``) or saved."""

    name: ClassVar[str] = "text"
    columns: ClassVar[tuple[str, ...]] = ("tokens",)
    augments: ClassVar[bool] = False
    identity_key: ClassVar[str] = "inputs"
    column: str
    tokenizer: tokenizers.Tokenizer
    made_of: str  # a trained tokenizer's folder name (the hash of what it is made of), or a saved one's sha256
    training: tuple[Split, TokenizerConfig] | None = None  # what to train it on when it is not saved

    @property
    def shape(self) -> tuple[int]:
        return (self.tokenizer.max_length,)

    def prepare(self, batch: dict[str, np.ndarray], pool: Executor | None = None) -> dict[str, np.ndarray]:
        tokens, lengths, truncated = self.tokenizer.encode([str(t) for t in batch[self.column]])
        out = {"id": batch["id"], "tokens": tokens, "length": lengths, "truncated": truncated}
        return {**out, "label": batch["label"]}

    def on_device(self, batch: dict[str, np.ndarray], device: torch.device, pool: Executor) -> dict[str, torch.Tensor]:
        from distkd.data import gpu_decode

        return {"tokens": gpu_decode.host_to_device(self.prepare(batch)["tokens"], device)}

    def model_input(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        return batch["tokens"].to(device, non_blocking=True).long()

    def example(self, rows: int) -> dict[str, torch.Tensor]:
        import torch

        tokens = torch.zeros(rows, self.tokenizer.max_length, dtype=torch.int32)
        tokens[:, 0] = 1  # one real token: a row of padding alone is not what the data holds
        return {"tokens": tokens}

    def row_bytes(self) -> int:
        return 4 * self.tokenizer.max_length

    def model_kwargs(self) -> dict:
        return {"vocab_size": self.tokenizer.vocab_size}

    def identity(self) -> dict:
        out = {"tokenizer": self.made_of, "max_length": self.tokenizer.max_length}
        return {**out, "special_tokens": True} if self.tokenizer.specials else out  # a model's own tokenizer

    def check(self, split: Split) -> None:
        """Every row in use has a text of valid UTF-8 that is not empty (an empty one would tokenise to nothing but
        padding)."""
        texts = split.read_table([self.column])[self.column]
        if (bad := _invalid_utf8(texts)) is not None:
            raise ConfigError(
                f"{row(split, bad)}: the text in column '{self.column}' is not valid UTF-8; re-encode the file's "
                "texts as UTF-8 (or drop the row)"
            )
        missing = pc.or_kleene(texts.is_null(), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0))
        empty = np.flatnonzero(missing.fill_null(True).to_numpy(zero_copy_only=False))
        if len(empty):
            what = "no text (null)" if texts[int(empty[0])].as_py() is None else "an empty text"
            raise ConfigError(
                f"{row(split, int(empty[0]))}: {what} in column '{self.column}' ({len(empty)} row(s) of split "
                f"'{split.name}' have none); drop those rows or fill them in"
            )
        if self.training is not None and split == self.training[0]:
            self._fits_alphabet(split, texts.to_pylist(), self.training[1])

    @staticmethod
    def _fits_alphabet(split: Split, texts: list[str], settings: TokenizerConfig) -> None:
        """A tokenizer to train holds its alphabet whatever its ``vocab_size``: one smaller than that would give ids
        beyond the models' embedding."""
        smallest = tokenizers.smallest(settings.name, texts)
        if settings.vocab_size < smallest:
            raise ConfigError(
                f"key 'data.tokenizer.vocab_size': a {settings.name} tokenizer trained on split '{split.name}' holds "
                f"at least {smallest} tokens (its special tokens and its alphabet), more than the "
                f"{settings.vocab_size} the models would be built for: set 'data.tokenizer.vocab_size' to "
                f"{smallest} or more"
            )

    @property
    def folder(self) -> str:
        """The tokenizer's folder in the store (a trained one's; a saved one's own folder)."""
        return self.tokenizer.uri.rsplit("/", 1)[0]

    def pending(self) -> tuple[str, str] | None:
        if self.training is None or storage.is_committed(self.folder):
            return None
        settings = self.training[1]
        return f"training a {settings.name} tokenizer of {settings.vocab_size:,} ids", self.folder

    def ready(self) -> None:
        if self.training is not None:
            split, settings = self.training
            texts = _texts_of(split, self.column)
            tokenizers.train_into(self.folder, settings.name, settings.vocab_size, settings.max_length, texts)


def _invalid_utf8(texts: pa.ChunkedArray) -> int | None:
    """The index of the first text that is not valid UTF-8 (Arrow reads such strings from Parquet unchecked), or
    None."""
    offset = 0
    for chunk in texts.chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            for i, value in enumerate(chunk.view(pa.binary()).to_pylist()):
                try:
                    value is None or value.decode("utf-8")
                except UnicodeDecodeError:
                    return offset + i
        offset += len(chunk)
    return None


def _texts_of(split: Split, column: str) -> Callable[[], list[list[str]]]:
    def read() -> list[list[str]]:
        texts = split.read_table([column])[column].to_pylist()
        return [texts[i : i + tokenizers.TRAIN_BATCH] for i in range(0, len(texts), tokenizers.TRAIN_BATCH)]

    return read


def text_input(
    split: Split, data: DataConfig, settings: TokenizerConfig | None, store: str, key: str = "tokenizer"
) -> TextInput:
    """The text kind for the tokenizer ``settings`` (``data.<key>``): a saved one, or one to train in the store."""
    settings = settings or TokenizerConfig()
    (column,) = split.input.columns
    if settings.name.startswith(tokenizers.HF):
        try:
            saved = tokenizers.saved(settings.name.removeprefix(tokenizers.HF), settings.max_length)
        except tokenizers.TokenizerError as e:
            raise ConfigError(f"key 'data.{key}.name': {e}") from None
        return TextInput(column, saved, f"sha256:{content.sha256(saved.uri)}")
    made_of = {"data": split.identity(), "column": column, "settings": settings.model_dump()}
    folder = tokenizers.location(store, made_of)
    trained = tokenizers.trained(folder, settings.max_length, settings.vocab_size)
    return TextInput(column, trained, folder.rsplit("/", 1)[-1], (split, settings))  # not the store's path


def recorded_texts(split: Split, info: dict) -> TextInput:
    """The text kind a run was trained with, from its run.json: its tokenizer's folder in the store."""
    made_of, max_length = info[TextInput.identity_key]["tokenizer"], info[TextInput.identity_key]["max_length"]
    if not storage.is_committed(made_of):  # a saved tokenizer is recorded by its sha256 alone
        raise ConfigError(
            f"the run's tokenizer ({made_of}) is not a tokenizer folder of the store: export needs a run whose "
            "tokenizer distkd trained"
        )
    tokenizer = tokenizers.Tokenizer(
        storage.join(made_of, tokenizers.FILE), max_length, info["model"]["kwargs"]["vocab_size"]
    )
    (column,) = split.input.columns
    return TextInput(column, tokenizer, made_of)


TEXT = Kind(
    OneColumn(STRINGS),
    text_input,
    "strings",
    column="text",
    settings=("tokenizer", TokenizerConfig),
    recorded=recorded_texts,
)


def _blocks(schema: pa.Schema, column: str | None, settings: Strict | None, label: str) -> tuple | None:
    """The blocks kind's ``find``: a text column, when the job gives 'data.blocks' (else the column is a text's)."""
    return None if settings is None else OneColumn(STRINGS)(schema, column, settings, label)


BLOCKS = Kind(  # a language model's documents: data/blocks.py, tokenised as the text kind tokenises
    _blocks,
    lambda split, data, settings, store: DocumentBlocks(text_input(split, data, settings, store, "blocks")),
    "strings, one document a row",
    column="text",
    settings=("blocks", TokenizerConfig),
)

INPUTS.register("image")(IMAGE)
INPUTS.register("text")(TEXT)
INPUTS.register("tabular")(TABULAR)  # feature columns: data/tabular.py
INPUTS.register("blocks")(BLOCKS)


def settings(data: DataConfig) -> dict[str, Strict]:
    """The input kinds' settings the job gives (a key of ``data`` beside its own: ``data.tokenizer``), each validated
    by its kind's schema, by the kind's name; a key no kind declares, or settings the schema refuses, is a
    ``ConfigError`` naming the key."""
    kinds = {name: INPUTS[name] for name in INPUTS}
    declared = {kind.settings[0]: (name, kind.settings[1]) for name, kind in kinds.items() if kind.settings}
    found = {}
    for key, raw in (data.model_extra or {}).items():
        if key not in declared:
            keys = ", ".join(f"'data.{k}'" for k in sorted(declared))
            raise ConfigError(f"unknown key 'data.{key}' (the input kinds' settings are {keys})")
        name, schema = declared[key]
        if raw is not None:
            found[name] = validated(schema, raw, f"data.{key}")
    return found


def finder(data: DataConfig) -> Finder:
    """How a split's input is found for the job's data settings. Its input column is ``data.input_column``, else the
    first kind's default column the shard has; the kinds whose settings the job gives are asked first, then the
    others, a catch-all last, and the first that finds its input in the schema is the split's kind."""
    given = settings(data)
    order = sorted(INPUTS, key=lambda name: (name not in given, INPUTS[name].catch_all))
    defaults = [column for name in order if (column := INPUTS[name].column)]

    def find(schema: pa.Schema, uri: str, label: str) -> Input:
        column = data.input_column or next((c for c in defaults if c in schema.names), None)
        for name in order:
            if found := INPUTS[name].find(schema, column, given.get(name), label):
                return Input(name, *found)
        expected = "; ".join(f"{INPUTS[n].holds} (a{'n' * (n[0] in 'aeiou')} {n} input)" for n in INPUTS)
        if column is None:
            raise DataError(f"{uri}: no input column: expected {expected}; or name it with 'data.input_column'")
        if column not in schema.names:
            raise DataError(f"{uri}: no input column '{column}' (key 'data.input_column')")
        raise DataError(f"{uri}: input column '{column}' holds {schema.field(column).type} values; expected {expected}")

    return find


def read_by(kind: InputKind, tokenizer: str | None, max_length: int | None) -> InputKind:
    """How one model reads the job's input: a text tokenised with the model's own tokenizer (saved at
    ``tokenizer``, its special tokens added) and cut at the model's own ``max_length``, where it has them; a
    language model's documents (blocks) likewise, their ids alone (no special tokens: a document ends with the
    separator); else ``kind`` itself, which every other model reads alike. ``max_length`` asked of another kind is
    refused (a ``ConfigError``)."""
    if isinstance(kind, DocumentBlocks):
        text = _read_text(kind.text, tokenizer, max_length, specials=False)
        return kind if text is kind.text else DocumentBlocks(text)
    if not isinstance(kind, TextInput):
        if max_length is not None:
            raise ConfigError(f"'max_length' cuts a text input's tokens; a {kind.name} input has none: leave it out")
        return kind
    return _read_text(kind, tokenizer, max_length, specials=True)


def _read_text(kind: TextInput, tokenizer: str | None, max_length: int | None, specials: bool) -> TextInput:
    length = max_length or kind.tokenizer.max_length
    if tokenizer is None:
        cut = dataclasses.replace(kind.tokenizer, max_length=length)
        return kind if cut == kind.tokenizer else dataclasses.replace(kind, tokenizer=cut)
    own = tokenizers.saved(tokenizer, length, specials=specials)  # a TokenizerError when it does not load
    return TextInput(kind.column, own, f"sha256:{content.sha256(own.uri)}")


def for_data(split: Split, data: DataConfig, store: str) -> InputKind:
    """The input kind of ``split`` (the training split), built for the job's data settings."""
    return INPUTS[split.input.kind].build(split, data, settings(data).get(split.input.kind), store)


@ray.remote(num_cpus=1)
def _ready(kind: InputKind) -> None:
    kind.ready()


def make_ready(kind: InputKind) -> None:
    """``kind.ready()`` in a Ray task (a tokenizer is trained on a worker, not on the driver), when it has
    something to make."""
    if making := kind.pending():
        with console.computing("inputs", *making):
            ray.get(_ready.remote(kind))
