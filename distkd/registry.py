"""One small registry type: models, KD losses, optimisers and schedules each register their entries in one.

A job file picks an entry by name (``train.optimizer: {name: adamw, kwargs: {...}}``); adding a method is one
decorated function plus its test, never a new branch in the code that uses it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Named entries of one kind; ``kind`` names it in errors (``unknown loss 'x'; known: ...``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@LOSSES.register("hinton")`` adds the function or class under ``name``."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {', '.join(self)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def refusal(self, name: str, kwargs: dict, fixed: int) -> str | None:
        """Why entry ``name`` cannot be called with ``kwargs`` after its first ``fixed`` positional arguments
        (unknown entry, or arguments it does not take), or None."""
        if name not in self._entries:
            return f"unknown {self.kind} '{name}'; known: {', '.join(self)}"
        entry = self._entries[name]
        names = list(inspect.signature(entry).parameters)[fixed:]
        if unknown := sorted(set(kwargs) - set(names)):
            return f"unknown argument(s) {', '.join(unknown)}; {name} takes {', '.join(names) or 'none'}"
        return None
