"""The errors of data that is not what the job expects: below the data's readers and the weights' loader, which
both raise them, and the checks and the command line, which name them."""

from __future__ import annotations

from ray.exceptions import UserCodeException


class DataError(ValueError, UserCodeException):
    """Data that does not match the layout: names the URI (and the row) and what was expected. Raised in a
    Ray Data task it is the user's error, not Ray's: Ray Data then logs no stack trace of its own."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message  # as written: Ray Data appends retry advice to ``args`` of errors in its tasks


class InputChanged(DataError):
    """An input file (a data shard, a weights file) that is not what the job opened or hashed: it changed while
    the job ran, and an output made of it would carry the key of the other version."""
