"""Files inside installed Python packages, named ``package:<module>/<path>``: found wherever this environment
installed the package (site-packages differs per virtual environment), so a job file names them the same on every
machine. A model folder or file (``hf:package:...``) and a tokenizer (``data.blocks.name: hf:package:...``) are
named so."""

from __future__ import annotations

import importlib.resources
import importlib.util

PACKAGE = "package:"


class PackageError(ValueError):
    """A ``package:`` name whose package is not installed here."""


def named(where: str) -> bool:
    """Whether ``where`` names a file inside a package (``package:<module>/<path>``)."""
    return where.startswith(PACKAGE)


def path(where: str) -> str:
    """The local path of ``package:<module>/<path>``, found through ``importlib.resources`` without importing the
    package's code; a ``PackageError`` naming the module when it is not installed."""
    module, _, inner = where.removeprefix(PACKAGE).partition("/")
    try:
        found = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise PackageError(f"'{where}': no installed package '{module}' (pip install the package that provides it)")
    return str(importlib.resources.files(module).joinpath(inner))
