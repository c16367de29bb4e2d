"""Augmented views recorded with the soft labels: a padded crop offset and a flip per view.

The parameters of view ``v`` of sample ``id`` are a hash of (seed, id, v), so they do not depend
on how the data is sharded or ordered, and a resumed or retried job draws the same views.
"""

from __future__ import annotations

import hashlib

import numpy as np

PARAMS = 3  # dy, dx, flip


def view_params(ids: list[str], views: int, pad: int, seed: int) -> np.ndarray:
    """int16 [N, views, 3]: crop offsets in [0, 2 * pad] into the padded image, and a 0/1 flip."""
    out = np.empty((len(ids), views, PARAMS), dtype=np.int16)
    for i, sample in enumerate(ids):
        for v in range(views):
            b = hashlib.blake2b(f"{seed}:{sample}:{v}".encode(), digest_size=5).digest()
            dy, dx = (int.from_bytes(b[j : j + 2], "big") % (2 * pad + 1) for j in (0, 2))
            out[i, v] = (dy, dx, b[4] & 1)
    return out
