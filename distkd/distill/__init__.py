"""Distillation: the KD loss and the Ray Train loop."""
