"""distkd: distributed batch soft-label generation and knowledge distillation on Ray."""

__version__ = "0.1.0"
