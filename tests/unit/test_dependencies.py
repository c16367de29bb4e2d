"""The dependency floors that distkd's safety rests on, and an environment that meets them."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# name -> (the first release distkd may run on, the last one before it), and why
FLOORS = {
    "torch": ("2.6", "2.5.1"),  # CVE-2025-32434: torch.load(weights_only=True) runs a crafted file's code before 2.6
    "torchvision": ("0.21", "0.20.1"),  # built for torch 2.6
    "boto3": ("1.35", "1.34.162"),  # IfNoneMatch on put_object / complete_multipart_upload: create-if-absent on S3
    "botocore": ("1.35", "1.34.162"),
}


def requirements() -> dict[str, Requirement]:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, declared)}


@pytest.mark.parametrize(("name", "floor", "before"), [(name, *releases) for name, releases in FLOORS.items()])
def test_dependency_floors_leave_out_every_release_before_the_fix(name, floor, before):
    specifier = requirements()[name].specifier
    assert specifier.contains(floor) and not specifier.contains(before)
    assert specifier.contains(version(name))  # what is installed here meets it
