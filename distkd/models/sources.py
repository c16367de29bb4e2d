"""Model sources: where the network a job names comes from.

A model's ``name`` is a built-in name (``resnet9``, ...: ``MODELS``) or ``<source>:<rest>``:

| source | rest | built by |
| --- | --- | --- |
| ``torchvision`` | a classification builder | ``torchvision.models.get_model(rest, num_classes=C)`` |
| ``timm`` | a timm model name | ``timm.create_model(rest, pretrained=False, num_classes=C, in_chans=...)`` |
| ``hf`` | a ``save_pretrained`` folder (path, URI or ``package:<module>/<folder>``) or a Hub id | see below |
| ``hf-config`` | as ``hf`` | as ``hf``, from the folder's ``config.json`` alone (``kwargs`` set its fields) |
| ``torchscript`` | a TorchScript file (path or URI) | ``torch.jit.load``: a program, inference only |
| ``export`` | a ``torch.export.save`` archive (path or URI) | ``torch.export.load(...).module()``: inference only |
| ``lightgbm``, ``xgboost`` | a saved booster (path or URI) | ``models/boosters.py``: raw columns in, inference only |
| ``import`` | ``<module>:<callable>`` | the user's class or builder, from the job's ``code:`` paths |

``hf`` builds the auto-class the job's task picks (``HEADS``): for a classification,
``AutoModelForSequenceClassification`` when the input is text (its kwargs hold the tokenizer's ``vocab_size``:
``TextInput.model_kwargs``), else ``AutoModelForImageClassification``; for a language model,
``AutoModelForCausalLM``. A text model reads with the folder's own tokenizer where it has one (``own_tokenizer``);
from the folder's weights, or from its config alone with random weights (``hf-config``). A Hub id
(``<org>/<name>[@<revision>]``) is downloaded once through ``huggingface_hub`` and is then a folder like any other,
named by its files' content; a ``.gguf`` file is a folder of that one file (``from_pretrained(gguf_file=...)``,
the ``gguf`` extra), its tokenizer inside it.

Each source is one ``SOURCES`` entry; adding one is one registered ``Source``. ``identity`` names what
defines a model beyond its name (the bytes of a program, a Hugging Face folder or the user's code; the
package version for timm), so a changed class body retrains and an unchanged one is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import logging
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch
from torch import nn

from distkd import packages, storage
from distkd.data.tokenizer import FILE as TOKENIZER_FILE
from distkd.data.tokenizer import (
    GGUF,  # an hf: model in one file (llama.cpp's): config, tokenizer, weights
    PAD,
)
from distkd.models.boosters import BOOSTERS, BoosterError
from distkd.models.registry import MODELS
from distkd.registry import Registry

BUILTIN = "builtin"  # the source of a name without a ``<source>:`` prefix
SKIPPED = {"__pycache__"}  # folders of a ``code:`` path that are not its code


class SourceError(ValueError):
    """A model name that names nothing buildable: unknown source or model, missing extra, the user's code."""


@dataclass(frozen=True)
class Source:
    """How one kind of name is built. ``build(rest, num_classes, in_channels, image_size, kwargs, code)``;
    ``check(rest, code)`` resolves the name without building (raises ``SourceError``); ``identity(rest, code)``
    is what defines the model beyond its name, or None."""

    build: Callable[..., nn.Module]
    check: Callable[[str, tuple[str, ...]], None]
    identity: Callable[[str, tuple[str, ...]], str | None] = lambda rest, code: None
    trainable: bool = True  # False: a program (its weights are in the file; inference only)
    path: bool = False  # its rest is a file or folder (a path or URI): made absolute, and named by its bytes alone
    reads_columns: bool = False  # True: a ``ColumnModel``, called with the split's raw columns (models/columns.py)
    per_task: bool = False  # True: ``build`` also takes the job's task name, which picks what it builds (``HEADS``)

    def __call__(self, rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code, task: str):
        shape = (rest, num_classes, in_channels, image_size, kwargs, code)
        return self.build(*shape, task) if self.per_task else self.build(*shape)


SOURCES: Registry[Source] = Registry("model source")


def split(name: str) -> tuple[str, str]:
    """``(source, rest)`` of a model name: ``timm:resnet18`` -> ``("timm", "resnet18")``; ``resnet9`` is built-in."""
    source, sep, rest = name.partition(":")
    return (source, rest) if sep else (BUILTIN, name)


def _source(name: str) -> tuple[Source, str]:
    kind, rest = split(name)
    if kind not in SOURCES:
        raise SourceError(
            f"unknown model source '{kind}' in '{name}'; known: {', '.join(SOURCES)} "
            f"(or a built-in name: {', '.join(sorted(MODELS))})"
        )
    if not rest:
        raise SourceError(f"'{name}' names no model after '{kind}:'")
    return SOURCES[kind], rest


HF_SOURCES = ("hf", "hf-config")  # a Hugging Face folder: its weights, or its config alone


def absolute(name: str) -> str:
    """``name`` with a local path made absolute (Ray workers do not share the driver's working directory), and a
    Hugging Face folder named by its package or Hub id made the local folder it is here."""
    kind, rest = split(name)
    if kind in HF_SOURCES and rest:
        rest = _hf_where(rest)
    return f"{kind}:{storage.absolute(rest)}" if _is_path(kind) and rest else name


def located(name: str) -> str:
    """``name`` as an identity holds it: a file or folder source without its location (the hash of its bytes,
    ``identity``, stands for it), so a program moved or copied unchanged keeps its keys."""
    kind, _ = split(name)
    return f"{kind}:" if _is_path(kind) else name


def _is_path(kind: str) -> bool:
    return kind in SOURCES and SOURCES[kind].path


def check(name: str, code: Iterable[str] = ()) -> None:
    """Raise ``SourceError`` unless ``name`` resolves (known model, extra installed, the user's callable found)."""
    source, rest = _source(name)
    source.check(rest, tuple(code))


CLASSIFICATION = "classification"  # the task of a model built without one (``tasks.TASKS`` names them all)


def build(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    code: Iterable[str] = (),
    task: str = CLASSIFICATION,
    **kwargs,
):
    """The model ``name`` for ``num_classes`` classes and inputs of ``in_channels`` x ``image_size``, for ``task``."""
    source, rest = _source(name)
    return source(rest, num_classes, in_channels, image_size, kwargs, tuple(code), task)


def trainable(name: str) -> bool:
    """Whether ``name`` can be trained (a teacher of stage 0, a student); programs are inference only."""
    return _source(name)[0].trainable


def reads_columns(name: str) -> bool:
    """Whether ``name`` reads the split's raw columns (a booster) rather than the input kind's tensors."""
    kind, _ = split(name)
    return kind in SOURCES and SOURCES[kind].reads_columns


def own_weights(name: str) -> str | None:
    """The URI that holds the weights of a model that carries them (a program file; a local path made absolute,
    as ``absolute`` makes the name the model is built from, so that ``load_weights`` knows the program's own
    file), else None (also for a name of no known source: ``check`` says what is wrong with it)."""
    kind, rest = split(name)
    return storage.absolute(rest) if kind in SOURCES and not SOURCES[kind].trainable else None


OWN = "own"  # ``weights: own``: a Hugging Face folder's own weights, a classifier that labels as it is (no stage 0)
HF_WEIGHTS = "model.safetensors"  # what save_pretrained writes a folder's weights to


def given_weights(weights: str | None, name: str) -> str | None:
    """A model's weights as its job gives them: ``weights`` (``own``: its folder's), else a program's own; None:
    it is to be trained."""
    if weights == OWN:
        kind, rest = split(name)
        return _own_file(rest) if kind == "hf" else None  # another source has none (``check_own`` says so)
    return weights or own_weights(name)


def _own_file(rest: str) -> str:
    """The weights file of the Hugging Face folder ``rest`` (a ``.gguf`` file: itself), as ``weights: own`` names
    it."""
    where = storage.absolute(_hf_where(rest))
    return where if _is_gguf(where) else storage.join(where, HF_WEIGHTS)


def check_own(name: str, num_classes: int, task: str = CLASSIFICATION) -> None:
    """A ``SourceError`` unless ``name`` is an ``hf:`` folder that holds the task's model (``HEADS``: a classifier
    of ``num_classes`` classes, a causal language model) with its weights, or a ``.gguf`` file of a language model:
    what ``weights: own`` labels with as it is (a folder without one would get a random head)."""
    kind, rest = split(name)
    if kind != "hf":
        raise SourceError(f"'{OWN}' names the weights in an hf: folder; '{name}' has none of its own")
    head, folder = HEADS[task], _hf_where(rest)
    if _is_gguf(folder):
        architectures, classes, weights = ["ForCausalLM"], None, True  # llama.cpp's files hold causal LMs
    else:
        config = json.loads(storage.read_bytes(storage.join(folder, "config.json")))
        architectures = config.get("architectures") or []
        classes = len(config.get("id2label") or {}) or config.get("num_labels")
        weights = storage.exists(storage.join(folder, HF_WEIGHTS))
    holds = any(a.endswith(head.architectures) for a in architectures)
    if not holds or (head.labelled and classes != num_classes) or not weights:
        raise SourceError(
            f"{rest}: '{OWN}' needs a folder that holds {head.holds.format(classes=num_classes)} and its "
            f"{HF_WEIGHTS} (it holds {architectures}{f' with {classes} labels' if classes else ''}); leave 'weights' "
            "out to train one from the folder's weights"
        )


def identity(name: str, code: Iterable[str] = ()) -> str | None:
    """What defines ``name`` beyond the name: ``sha256:<hex>`` of its files, ``<package> <version>``, or None."""
    source, rest = _source(name)
    return source.identity(rest, tuple(code))


# --- built-in, torchvision, timm: code that comes with a package


def _builtin_check(rest: str, code: tuple[str, ...]) -> None:
    if rest not in MODELS:
        raise SourceError(
            f"unknown model '{rest}'; known: {', '.join(sorted(MODELS))}, or <source>:<name> with a source of "
            f"{', '.join(s for s in SOURCES if s != BUILTIN)}"
        )


def _builtin(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple) -> nn.Module:
    return MODELS[rest](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)


def _extra(module: str, extra: str) -> object:
    """``module`` imported, or a ``SourceError`` saying which distkd extra installs it."""
    if importlib.util.find_spec(module) is None:
        raise SourceError(f"needs the '{module}' package: pip install 'distkd[{extra}]'")
    return importlib.import_module(module)


def _version(module: str, extra: str) -> str:
    return f"{module} {_extra(module, extra).__version__}"


def _torchvision_check(rest: str, code: tuple[str, ...]) -> None:
    import torchvision.models

    known = torchvision.models.list_models(module=torchvision.models)  # the classification builders
    if rest not in known:
        raise SourceError(f"torchvision has no classification model '{rest}'; known: {', '.join(known)}")


def _torchvision(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple):
    import torchvision.models

    return torchvision.models.get_model(rest, weights=None, num_classes=num_classes, **kwargs)


def _torchvision_version() -> str:
    import torchvision

    return f"torchvision {torchvision.__version__}"


def _timm_check(rest: str, code: tuple[str, ...]) -> None:
    timm = _extra("timm", "timm")
    if not timm.is_model(rest):
        raise SourceError(f"timm has no model '{rest}' (timm.list_models() lists them)")


def _timm(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple) -> nn.Module:
    timm = _extra("timm", "timm")
    return timm.create_model(rest, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


# --- files: Hugging Face folders, programs, the user's code, hashed by their bytes


def first_line(error: BaseException) -> str:
    """``<type>: <first line of the message>``: an error as one line of a message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files_sha256(files: Iterable[tuple[str, bytes]]) -> str:
    """One hash of (name, bytes) pairs, in name order: a renamed, changed, added or removed file changes it."""
    return "sha256:" + _sha256("".join(f"{name}:{_sha256(data)};" for name, data in sorted(files)).encode())


def _folder_files(uri: str) -> list[str]:
    files = storage.list_files(uri)
    if not files:
        raise SourceError(f"{uri}: no files (expected a folder written by save_pretrained)")
    return files


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?")  # hf:<org>/<name>[@<revision>]
_HF_FOLDERS: dict[str, str] = {}  # URI or Hub id -> local folder, per process


def _hub_folder(rest: str) -> str:
    """The Hub model ``<id>[@<revision>]``, downloaded once into the Hugging Face cache (``huggingface_hub``);
    a ``SourceError`` naming the id when it cannot be had (offline, unknown id, no access)."""
    if rest not in _HF_FOLDERS:
        hub = _extra("huggingface_hub", "hf")
        repo, _, revision = rest.partition("@")
        try:
            _HF_FOLDERS[rest] = hub.snapshot_download(repo, revision=revision or None)
        except Exception as e:  # noqa: BLE001 - offline, no such repository, gated: each means the same here
            raise SourceError(
                f"'{rest}' is no folder here, and as a Hugging Face Hub id it could not be downloaded "
                f"({first_line(e)}); offline, save the model with save_pretrained and name its folder"
            ) from None
    return _HF_FOLDERS[rest]


def _hf_where(rest: str) -> str:
    """Where the folder of ``hf:<rest>`` is: a package's folder or a Hub id resolved to a local one, else
    ``rest`` (a path or URI)."""
    if packages.named(rest):
        try:
            return packages.path(rest)
        except packages.PackageError as e:
            raise SourceError(str(e)) from None
    if not storage.is_remote(rest) and not Path(rest).exists() and HUB_ID.fullmatch(rest):
        return _hub_folder(rest)
    return rest


def _is_gguf(where: str) -> bool:
    return where.endswith(GGUF)


def _hf_files(rest: str) -> list[str]:
    """The files of ``hf:<rest>``: a folder's, or a ``.gguf`` file alone."""
    where = _hf_where(rest)
    return [where] if _is_gguf(where) else _folder_files(where)


def _hf_local(uri: str) -> str:
    """A local folder (or ``.gguf`` file) with the files of the Hugging Face folder (or file) at ``uri``, copied
    once per process if remote."""
    uri = _hf_where(uri)
    if not storage.is_remote(uri):
        return storage.absolute(uri)
    if uri not in _HF_FOLDERS:
        local = tempfile.mkdtemp(prefix="distkd-hf-")
        for file in _hf_files(uri):
            (Path(local) / file.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(file))
        _HF_FOLDERS[uri] = storage.join(local, uri.rsplit("/", 1)[-1]) if _is_gguf(uri) else local
    return _HF_FOLDERS[uri]


def _hf_load(rest: str) -> tuple[str, dict]:
    """What transformers' ``from_pretrained`` reads ``hf:<rest>`` from: a local folder, and for a ``.gguf`` file
    its folder and ``gguf_file`` (its tensors dequantised as transformers loads them: the ``gguf`` extra)."""
    local = _hf_local(rest)
    if not _is_gguf(local):
        return local, {}
    for module in ("gguf", "accelerate"):
        _extra(module, "gguf")
    folder, _, file = local.rpartition("/")
    return folder, {"gguf_file": file}


def _hf_check(rest: str, code: tuple[str, ...]) -> None:
    _extra("transformers", "hf")
    where = _hf_where(rest)
    if _is_gguf(where):
        if not storage.exists(where):
            raise SourceError(f"{rest}: no such GGUF file")
        return
    config = storage.join(where, "config.json")
    if not storage.exists(config):
        raise SourceError(f"{rest}: no config.json (expected a folder written by save_pretrained, or a .gguf file)")
    try:
        json.loads(storage.read_bytes(config))
    except ValueError as e:
        raise SourceError(f"{config}: not JSON ({e}); expected a folder written by save_pretrained") from None


class HFClassifier(nn.Module):
    """A transformers image classifier as a plain module: images in, the logits tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


class HFTextClassifier(nn.Module):
    """A transformers text classifier as a plain module: a text input's token ids in (the tokenizer's ids + 1, 0
    padding: ``data/tokenizer.py``), the logits out; padding is masked from attention."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        real = tokens != PAD
        return self.model(input_ids=(tokens - 1).clamp(min=0), attention_mask=real.long()).logits


NEVER = -1e4  # the logit of the padding id (0), which no target is: no probability, and finite in fp16


class HFCausalLM(nn.Module):
    """A transformers causal language model as a plain module: a blocks input's token ids in (the tokenizer's ids
    + 1; padding, 0, only after a block's real tokens, which never attend to it), logits [N, L, vocab] out over
    those ids: ``NEVER`` for padding, then the model's logits of its tokenizer's ``vocab - 1`` ids (a model may
    embed more, rounding its matrix up)."""

    def __init__(self, model: nn.Module, vocab: int) -> None:
        super().__init__()
        self.model, self.vocab = model, vocab

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=(tokens.long() - 1).clamp(min=0), use_cache=False).logits
        return nn.functional.pad(logits[..., : self.vocab - 1], (1, 0), value=NEVER)


@dataclass(frozen=True)
class Head:
    """What an ``hf:`` model is for one task: per input (text or not), the transformers auto-class and the wrapper
    (``(model, vocab)`` -> a plain module); the architectures a folder's config names when it holds such a model
    (``weights: own``); and whether its outputs are the data's classes (``num_labels``), not its vocabulary."""

    autos: dict[bool, tuple[str, Callable[[nn.Module, int | None], nn.Module]]]
    architectures: tuple[str, ...]
    labelled: bool
    holds: str  # such a model, as a message says it ({classes}: the data's class count)


HEADS: dict[str, Head] = {  # by the job's task (``tasks.TASKS``)
    CLASSIFICATION: Head(
        {
            False: ("AutoModelForImageClassification", lambda model, vocab: HFClassifier(model)),
            True: ("AutoModelForSequenceClassification", lambda model, vocab: HFTextClassifier(model)),
        },
        ("ForSequenceClassification", "ForImageClassification"),
        labelled=True,
        holds="a classifier of the data's {classes} classes",
    ),
    "language_model": Head(
        {True: ("AutoModelForCausalLM", HFCausalLM)}, ("ForCausalLM",), labelled=False, holds="a causal LM"
    ),
}


def _head(rest: str, task: str, text: bool) -> tuple[Head, str, Callable[[nn.Module, int | None], nn.Module]]:
    """The head of ``task`` for a text input or not, its auto-class and its wrapper; a ``SourceError`` when there
    is none (a language model of images)."""
    head = HEADS[task]
    if text not in head.autos:
        raise SourceError(f"{rest}: an hf: model of {'text' if text else 'images'} for the task '{task}' is not built")
    return head, *head.autos[text]


def _hf_config(rest: str, kwargs: dict):
    """The folder's config with ``kwargs`` applied; a ``SourceError`` when the folder holds no model config."""
    transformers = _extra("transformers", "hf")
    local, gguf = _hf_load(rest)
    try:  # the folder's own config, before the kwargs are applied: whether the folder is a model at all
        transformers.AutoConfig.from_pretrained(local, **gguf)
    except Exception as e:  # noqa: BLE001 - a bad config.json raises what its contents make it raise
        raise SourceError(f"{rest}: not a save_pretrained model folder that loads: {first_line(e)}") from None
    return transformers.AutoConfig.from_pretrained(local, **gguf, **kwargs)


def _hf_model(rest: str, num_classes: int, kwargs: dict, pretrained: bool, task: str) -> nn.Module:
    """The task's model (``HEADS``): an image classifier, or a text classifier when the input is text (its kwargs
    hold the tokenizer's ``vocab_size``, ``TextInput.model_kwargs``); a causal language model of a blocks input;
    from the folder's weights or (``pretrained`` False) from its config alone, with random weights; ``kwargs`` set
    the config's fields."""
    transformers = _extra("transformers", "hf")
    transformers.logging.set_verbosity_error()  # its load reports and progress bars: the console is distkd's
    transformers.logging.disable_progress_bar()
    kwargs = dict(kwargs)
    vocab = kwargs.pop("vocab_size", None)  # ids the model sees: its tokenizer's + 1 (0 is padding)
    head, auto, wrapper = _head(rest, task, vocab is not None)
    auto = getattr(transformers, auto)
    if head.labelled and (vocab is not None or not pretrained):  # a pretrained image classifier keeps its head
        kwargs["num_labels"] = num_classes
    config = _hf_config(rest, kwargs)
    if not pretrained:
        if vocab is not None:
            config.vocab_size = vocab - 1  # a model from a config alone embeds exactly its tokenizer's ids
        return wrapper(auto.from_config(config), vocab)
    if vocab is not None and config.vocab_size < vocab - 1:
        raise SourceError(
            f"{rest}: the model embeds {config.vocab_size} token ids, fewer than its tokenizer's {vocab - 1}"
        )
    local, gguf = _hf_load(rest)
    with contextlib.redirect_stderr(io.StringIO()):  # the GGUF loader's own progress bar, which logging leaves on
        model = wrapper(auto.from_pretrained(local, config=config, **gguf), vocab)
    model.weights_uri = _own_file(rest)  # holds its folder's weights: what ``weights: own`` loads (load_weights)
    return model


def _hf(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple, task: str):
    return _hf_model(rest, num_classes, kwargs, pretrained=True, task=task)


def _hf_from_config(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code, task: str):
    return _hf_model(rest, num_classes, kwargs, pretrained=False, task=task)


def _hf_identity(rest: str, code: tuple[str, ...]) -> str:
    return _files_sha256((f.rsplit("/", 1)[-1], storage.read_bytes(f)) for f in _hf_files(rest))


def _hf_config_identity(rest: str, code: tuple[str, ...]) -> str:
    """A model from a config alone is its config and its tokenizer, never the folder's weights (a ``.gguf`` file
    holds all three: its bytes)."""
    named = ((f.rsplit("/", 1)[-1], f) for f in _hf_files(rest))
    kept = ((name, f) for name, f in named if name in HF_CONFIG_FILES or _is_gguf(name))
    return _files_sha256((name, storage.read_bytes(f)) for name, f in kept)


HF_CONFIG_FILES = ("config.json", TOKENIZER_FILE)


def own_tokenizer(name: str) -> str | None:
    """Where the tokenizer the model ``name`` reads a text with is (a Hugging Face folder that holds one,
    ``tokenizer.json``, or a ``.gguf`` file, which always does), or None: it reads with the job's
    (``data.tokenizer``, ``data.blocks``)."""
    kind, rest = split(name)
    if kind not in HF_SOURCES or not rest:
        return None
    where = _hf_where(rest)
    return where if _is_gguf(where) or storage.exists(storage.join(where, TOKENIZER_FILE)) else None


class Program(nn.Module):
    """A loaded program (TorchScript or torch.export) and ``weights_uri``, the file it came from: its weights."""

    def __init__(self, program: nn.Module, uri: str) -> None:
        super().__init__()
        self.program, self.weights_uri = program, uri

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> Program:
        """Only the wrapper's flag: a program runs as it was written (an exported one refuses ``train()``)."""
        self.training = mode
        return self


def _program_check(rest: str, code: tuple[str, ...]) -> None:
    fs, path = storage.resolve(rest)
    found = fs.get_file_info(path).type
    if found == pafs.FileType.NotFound:
        raise SourceError(f"{rest}: no such program file")
    if found != pafs.FileType.File:
        raise SourceError(f"{rest}: a folder, expected a program file (torch.jit.save or torch.export.save)")


def _torchscript(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple):
    try:
        return Program(torch.jit.load(io.BytesIO(storage.read_bytes(rest)), map_location="cpu"), rest)
    except Exception as e:  # noqa: BLE001 - torch.jit.load raises many kinds on a file of another kind
        raise SourceError(f"{rest}: not a TorchScript file (torch.jit.save): {first_line(e)}") from None


def _exported(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple):
    data = storage.read_bytes(rest)
    if not zipfile.is_zipfile(io.BytesIO(data)):  # before torch.export's imports, seconds on 2 cores
        raise SourceError(f"{rest}: not a torch.export archive (torch.export.save): not a zip archive")
    logger = logging.getLogger("torch.export")  # which logs a file it cannot read with a traceback, then raises
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - torch.export.load raises many kinds on a file of another kind
        raise SourceError(f"{rest}: not a torch.export archive (torch.export.save): {first_line(e)}") from None
    finally:
        logger.setLevel(level)
    return Program(program.module(), rest)


def _program_identity(rest: str, code: tuple[str, ...]) -> str:
    return "sha256:" + _sha256(storage.read_bytes(rest))


def _booster(kind: str) -> Source:
    """The source of ``<kind>:<file>`` boosters (``BOOSTERS[kind]``): a program that reads the raw columns, checked
    for its library and pandas (the ``<kind>`` extra) and refused unless it scores ``num_classes``."""

    def check(rest: str, code: tuple[str, ...]) -> None:
        for module in (kind, "pandas"):
            _extra(module, kind)
        _program_check(rest, code)

    def build(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple):
        check(rest, code)
        try:
            model = BOOSTERS[kind](storage.read_bytes(rest), rest)
        except BoosterError as e:
            raise SourceError(f"{rest}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a booster library raises many kinds on a file of another kind
            raise SourceError(f"{rest}: not a {kind} model file (save_model): {first_line(e)}") from None
        if model.classes != num_classes:
            raise SourceError(f"{rest}: a booster for {model.classes} classes; the data has {num_classes}")
        return model

    return Source(build, check, _program_identity, trainable=False, reads_columns=True, path=True)


def on_path(code: Iterable[str]) -> None:
    """Each ``code:`` path importable: a ``.py`` file as a module, a folder as a package (its parent on the path,
    as Ray's runtime_env ``py_modules`` ships them). Paths absent here (shipped by ``py_modules``) are skipped;
    relative ones (a ``distkd submit`` job's, in its working_dir) are taken from the current directory."""
    for path in map(Path, code):
        parent = str(path.parent)
        if path.exists() and parent not in sys.path:
            sys.path.insert(0, parent)


def _callable(rest: str, code: tuple[str, ...]) -> Callable[..., nn.Module]:
    module, sep, attribute = rest.partition(":")
    if not sep or not module or not attribute:
        raise SourceError(f"'import:{rest}': expected import:<module>:<callable>, e.g. import:mymodels:Net")
    on_path(code)
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0] and not module.startswith(f"{e.name}."):
            raise SourceError(f"'import:{rest}': importing '{module}' failed: {type(e).__name__}: {e}") from None
        raise SourceError(
            f"'import:{rest}': no module '{module}' on the Python path or in the job's 'code:' "
            f"({', '.join(code) or 'empty'})"
        ) from None
    except SystemExit as e:  # the module ends the process when imported: it is not model code to import
        raise SourceError(f"'import:{rest}': importing '{module}' called sys.exit({e.code!r})") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise SourceError(f"'import:{rest}': importing '{module}' failed: {type(e).__name__}: {e}") from None
    target = getattr(loaded, attribute, None)
    if not callable(target):
        raise SourceError(f"'import:{rest}': module '{module}' ({loaded.__file__}) has no callable '{attribute}'")
    return target


def _import_check(rest: str, code: tuple[str, ...]) -> None:
    _callable(rest, code)


SHAPE_ARGUMENTS = ("num_classes", "in_channels", "image_size")  # passed when the callable's signature names them


def _imported(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple):
    target = _callable(rest, code)
    shape = dict(zip(SHAPE_ARGUMENTS, (num_classes, in_channels, image_size)))
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): pass the kwargs alone
        parameters = {}
    model = target(**{k: v for k, v in shape.items() if k in parameters}, **kwargs)
    if not isinstance(model, nn.Module):
        raise SourceError(f"'import:{rest}' returned a {type(model).__name__}, expected a torch.nn.Module")
    return model


def code_files(code: Iterable[str]) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file of the ``code:`` paths (a folder's files under its name, caches left out)."""
    files = []
    for path in map(Path, code):
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in found:
            if SKIPPED.isdisjoint(file.parts) and file.suffix != ".pyc":
                files.append((str(file.relative_to(path.parent)), file.read_bytes()))
    return files


def _import_identity(rest: str, code: tuple[str, ...]) -> str | None:
    return _files_sha256(code_files(code)) if code else None


SOURCES.register(BUILTIN)(Source(_builtin, _builtin_check))
SOURCES.register("torchvision")(Source(_torchvision, _torchvision_check, lambda rest, code: _torchvision_version()))
SOURCES.register("timm")(Source(_timm, _timm_check, lambda rest, code: _version("timm", "timm")))
SOURCES.register("hf")(Source(_hf, _hf_check, _hf_identity, path=True, per_task=True))
SOURCES.register("hf-config")(Source(_hf_from_config, _hf_check, _hf_config_identity, path=True, per_task=True))
SOURCES.register("torchscript")(Source(_torchscript, _program_check, _program_identity, trainable=False, path=True))
SOURCES.register("export")(Source(_exported, _program_check, _program_identity, trainable=False, path=True))
SOURCES.register("import")(Source(_imported, _import_check, _import_identity))
SOURCES.register("lightgbm")(_booster("lightgbm"))
SOURCES.register("xgboost")(_booster("xgboost"))
