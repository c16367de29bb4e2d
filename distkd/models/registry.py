"""Models by name: torchvision classifiers and the small students, built for the data's shape; their weights.

A built-in model is one class (or builder) taking ``num_classes``, ``in_channels``, ``image_size`` and its own
keyword arguments, and one line registering it in ``MODELS``."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import torch
from torch import nn

from distkd import storage
from distkd.data.errors import InputChanged
from distkd.models.causal import CausalTransformer
from distkd.models.students import LeNet5, ResNet9
from distkd.models.tabular import DCNv2, TabularMLP, TabularWide
from distkd.models.text import TextCNN, TextTransformer
from distkd.registry import Registry


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int = 3, image_size: int = 224, cifar_stem: bool = False) -> nn.Module:
        import torchvision.models  # here, not at the top: every Ray worker imports this module, few build these

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if cifar_stem:
            _cifar_stem(model, in_channels)
        return model

    return build


def _cifar_stem(model: nn.Module, in_channels: int) -> None:
    """Replace the ImageNet stem (7x7/2 conv + max-pool, or 3x3/2 conv) with a 3x3/1 conv for 32x32 inputs."""
    if hasattr(model, "conv1"):  # ResNets
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    else:  # MobileNets: first conv of the first block
        stem = model.features[0][0]
        model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")  # (num_classes, in_channels, image_size, **kwargs)
MODELS.register("lenet5")(LeNet5)
MODELS.register("resnet9")(ResNet9)
MODELS.register("text_transformer")(TextTransformer)
MODELS.register("text_cnn")(TextCNN)
MODELS.register("lm_transformer")(CausalTransformer)
for _name in ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large"):
    MODELS.register(_name)(_torchvision(_name))
MODELS.register("dcn_v2")(DCNv2)
MODELS.register("tabular_mlp")(TabularMLP)
MODELS.register("tabular_wide")(TabularWide)


def weights_hash(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def read_state_dict(uri: str, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A state_dict (or the one in a ``{"model": state_dict}`` checkpoint) from a path or URI. With ``sha256``,
    the bytes read are hashed and loaded only if they are those: the file may have been rewritten since."""
    data = storage.read_bytes(uri)
    if sha256 is not None and (read := hashlib.sha256(data).hexdigest()) != sha256:
        raise InputChanged(
            f"{uri}: weights changed since the job hashed them (sha256 {read}, expected {sha256}); "
            "run the job again to use the new weights"
        )
    if uri.endswith(".safetensors"):
        from safetensors.torch import load  # the 'hf' extra

        return load(data)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, dict) else state


def load_weights(model: nn.Module, uri: str, sha256: str | None = None) -> nn.Module:
    if getattr(model, "weights_uri", None) == uri:  # a program (models/sources.py): its file holds its weights
        return model
    model.load_state_dict(read_state_dict(uri, sha256))
    return model


def placed(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in channels-last layout, on a GPU with cuDNN's autotuner on: the layout of the
    fastest convolution kernels there (tensor cores) and on a CPU (oneDNN: ResNet-9 trains 1.3x and labels
    1.5-1.8x faster in it, ``benchmarks/layout.py``). Inputs follow the weights' layout; tensors of other ranks
    are unchanged."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model.to(device, memory_format=torch.channels_last)
