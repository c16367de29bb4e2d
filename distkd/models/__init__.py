"""Models: the built-in ones (``MODELS``), their sources (``sources.py``) and their weights."""

from distkd.models.registry import MODELS, load_weights, placed, weights_hash

__all__ = ["MODELS", "load_weights", "placed", "weights_hash"]
