"""Model registry: torchvision classifiers and small students."""

from distkd.models.registry import MODELS, build_model, load_weights, placed, state_dict_bytes, weights_hash

__all__ = ["MODELS", "build_model", "load_weights", "placed", "state_dict_bytes", "weights_hash"]
