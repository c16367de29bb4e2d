"""``distkd cache`` deletes exactly what it is asked to and nothing else (unit tier: no Ray, no S3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distkd import storage
from distkd.cli import main

KEY = "0123456789abcdef0123456789abcdef"  # the form SoftLabelSpec.key takes
UNCOMMITTED = "fedcba9876543210fedcba9876543210"
TEACHER = "00112233445566778899aabbccddeeff"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return hand_made_store(tmp_path / "store")


def hand_made_store(root: Path) -> Path:
    """A store by hand: one committed entry, one without its marker, and the folders beside the cache."""
    shard = f"shards/{TEACHER}/{'1' * 32}.parquet"  # the label store's layout: shared, content-addressed
    manifest = {
        "key": KEY,
        "format_version": 3,
        "inputs": {},
        "shards": [{"file": f"../{shard}", "rows": 1, "bytes": 5, "sha256": "0" * 64}],
        **dict.fromkeys(["rows", "bytes", "computed_shards", "teacher_rows", "teacher_seconds"], 1),
        "rows_per_second": None,
        "distkd_version": "0",
        "created": "2026-12-01T00:00:00Z",
    }
    files = {
        f"softlabels/{shard}": b"shard",
        f"softlabels/{KEY}/manifest.json": json.dumps(manifest).encode(),
        f"softlabels/{KEY}/{storage.COMMIT_MARKER}": b"",
        f"softlabels/{UNCOMMITTED}/notes": b"not yet committed",
        "runs/teacher-abc/model.pt": b"weights",
        "reports/abc/metrics.json": b"{}",
        "teachers/resnet.pt": b"weights",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("action", ["rm", "show", "verify"])
@pytest.mark.parametrize(
    "key", ["..", "", ".", "../runs", "/abs", f"{KEY}/shards", f"{KEY}/..", KEY.upper(), f"{KEY}\n", "0" * 32]
)
def test_anything_but_an_existing_entry_is_refused_and_nothing_deleted(store, action, key, capsys):
    before = tree(store)
    assert main(["cache", action, key, "--store", str(store)]) == 2
    assert tree(store) == before
    error = capsys.readouterr().err
    assert "distkd cache ls" in error and "Traceback" not in error


def test_a_malformed_key_says_what_a_key_looks_like(store, capsys):
    assert main(["cache", "rm", "..", "--store", str(store)]) == 2
    assert "'..' is not a soft-label cache key (expected 32 lowercase hex characters" in capsys.readouterr().err


@pytest.mark.parametrize("key", [KEY, UNCOMMITTED])
def test_rm_removes_exactly_the_entry_committed_or_not(store, key, capsys):
    before = tree(store)
    assert main(["cache", "rm", key, "--store", str(store)]) == 0
    assert tree(store) == {p for p in before if not p.startswith(f"softlabels/{key}")}
    assert capsys.readouterr().out.strip() == f"removed {store}/softlabels/{key}"


def test_gc_removes_only_temporary_files_under_the_cache(store, tmp_path, capsys):
    """A temporary file reached through a link to a folder outside the cache is not the cache's leftover."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    foreign = outside / storage.temporary_name("notes.txt")
    foreign.write_bytes(b"someone else's")
    os.symlink(outside, store / "softlabels" / "linked")
    own = store / "softlabels" / "shards" / TEACHER / storage.temporary_name(f"{'2' * 32}.parquet")
    own.write_bytes(b"half")
    beside = store / "runs" / storage.temporary_name("model.pt")  # beside the cache: never gc's
    beside.write_bytes(b"half")
    before = tree(store)
    assert main(["cache", "gc", "--store", str(store), "--older-than", "0"]) == 0
    leases = {"softlabels/collectors"}  # where gc's own lease was while it ran (cache.py: no writer may run)
    assert tree(store) - leases == before - {str(own.relative_to(store))}
    assert foreign.exists() and beside.exists()
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"removed temporary file {own}", "1 removed, 0 younger than 0 s kept"]
