"""The package's layers and the stages' independence, as pyproject.toml's import-linter contracts declare them
(``lint-imports``): an upward import or an import between two stages fails here, naming the import, whether it is
at the top of a module, inside a function or behind ``TYPE_CHECKING``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root``, with the contracts of ``root/pyproject.toml``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(root / "pyproject.toml")]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def broken(result: subprocess.CompletedProcess) -> str:
    """The broken contracts' imports, as lint-imports names them."""
    out = result.stdout + result.stderr
    return out[out.find("Broken contracts") :] if "Broken contracts" in out else out


def test_the_package_keeps_its_layers_and_the_stages_never_import_one_another():
    result = lint_imports(ROOT)
    assert result.returncode == 0, broken(result)


@pytest.mark.parametrize(
    "added",
    [
        "\n\ndef _upward() -> None:\n    from distkd import cli  # noqa: F401\n",
        "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from distkd import cli  # noqa: F401\n",
    ],
    ids=["inside a function", "behind TYPE_CHECKING"],
)
def test_an_upward_import_breaks_the_layers_and_is_named(tmp_path, added):
    shutil.copytree(ROOT / "distkd", tmp_path / "distkd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "distkd" / "hashing.py", "a") as f:
        f.write(added)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "distkd.hashing -> distkd.cli" in broken(result)


def test_a_stage_importing_another_breaks_their_independence_and_is_named(tmp_path):
    shutil.copytree(ROOT / "distkd", tmp_path / "distkd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "distkd" / "evaluate" / "cost.py", "a") as f:
        f.write("\n\ndef _sideways() -> None:\n    from distkd.softlabels import leases  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "distkd.evaluate.cost -> distkd.softlabels.leases" in broken(result)
