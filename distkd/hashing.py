"""Stable hashes of identities: what every content-derived name in the store (runs, soft labels, reports,
tokenizers, sweeps) is made of. Below every module that names an output, so each of them can use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json


def _jsonable(obj: object) -> object:
    if hasattr(obj, "identity"):  # a spec part that says what of it counts (specs.ModelSpec)
        return obj.identity()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):  # pydantic configs
        return obj.model_dump()
    raise TypeError(f"cannot hash a {type(obj).__name__}")


def plain(obj: object) -> object:
    """``obj`` as plain JSON data (dataclasses and configs as dicts), as manifests record it."""
    return json.loads(json.dumps(obj, default=_jsonable))


def digest(obj: object, length: int = 16) -> str:
    """A short, stable hash of JSON-able data, dataclasses and configs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_jsonable).encode()).hexdigest()[:length]
