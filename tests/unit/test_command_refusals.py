"""Every bad command is refused in one line naming what is wrong, with its exit code, no traceback and no Ray
(issue 34's command cases and issue 16's): one row per command, through ``distkd.cli.main`` (unit tier).

Rows name their paths with placeholders filled from the ``places`` fixture: ``{store}`` a store by hand (one
committed soft-label entry, a run, a committed report), ``{report}`` that report, ``{file}`` a file, ``{code}`` a
folder of code (not a store), ``{nowhere}`` a path where nothing is, ``{job}`` a valid job on CIFAR-10 whose store
is empty, ``{broken}`` and ``{empty}`` report folders whose metrics.json does not parse or holds ``{}``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import pytest

from distkd import cli, storage
from tests.unit.test_cache_commands import KEY, TEACHER, hand_made_store
from tests.unit.test_config import write_job

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"

ROWS = [
    # -- stores that are not stores (issue 34): exit 2 and what is there instead, never "nothing"
    (["store", "ls", "--store", "{nowhere}"], 2, "--store {nowhere}: no such folder"),
    (["store", "ls", "--store", "{file}"], 2, "--store {file}: a file, not a store folder"),
    (["store", "ls", "--store", "{code}"], 2, "--store {code}: not a distkd store (it holds none of runs/"),
    (["cache", "ls", "--store", "{nowhere}"], 2, "--store {nowhere}: no such folder"),
    (["cache", "ls", "--store", "{file}"], 2, "a file, not a store folder"),
    (["cache", "ls", "--store", "{code}"], 2, "not a distkd store"),
    (["cache", "gc", "--store", "{nowhere}"], 2, "no such folder"),
    (["cache", "gc", "--store", "{file}", "--older-than", "0"], 2, "a file, not a store folder"),
    (["cache", "gc", "--store", "{code}", "--older-than", "0"], 2, "not a distkd store"),
    (["cache", "rm", KEY, "--store", "{code}"], 2, "not a distkd store"),
    # -- URIs with credentials or malformed, through storage.validate, named by their argument
    (["store", "ls", "--store", f"s3://AKIAEXAMPLE:{SECRET}@bucket/store"], 2, "--store: s3://***@bucket/store"),
    (["cache", "ls", "--store", f"s3://AKIAEXAMPLE:{SECRET}@bucket/store"], 2, "credentials in a URI are refused"),
    (["report", f"s3://AKIAEXAMPLE:{SECRET}@bucket/r"], 2, "REPORT: s3://***@bucket/r: credentials in a URI"),
    (["report", "{report}", "--out", f"s3://K:{SECRET}@bucket/out"], 2, "--out: s3://***@bucket/out: credentials"),
    (["store", "ls", "--store", "s3:/bucket/store"], 2, "--store: s3:/bucket/store: malformed URI"),
    (["export", f"s3://K:{SECRET}@bucket/run", "--format", "export"], 2, "RUN: s3://***@bucket/run: credentials"),
    # -- --older-than: a number of seconds >= 0
    (["cache", "gc", "--store", "{store}", "--older-than", "-5"], 2, "'-5' is not a number of seconds >= 0"),
    (["cache", "gc", "--store", "{store}", "--older-than", "nan"], 2, "'nan' is not a number of seconds >= 0"),
    (["cache", "gc", "--store", "{store}", "--older-than", "inf"], 2, "'inf' is not a number of seconds >= 0"),
    (["cache", "gc", "--store", "{store}", "--older-than", "soon"], 2, "'soon' is not a number of seconds >= 0"),
    # -- distkd report: a committed output is never rewritten; reports that are not reports
    (["report", "{report}", "--out", "{report}"], 2, "--out {report}: a committed report is there"),
    (["report", "{report}", "--out", "{file}"], 2, "--out {file}: a file is there"),
    (["report", "{broken}", "{report}", "--out", "{report}/combined"], 2, "{broken}/metrics.json: not JSON"),
    (["report", "{report}", "--out", "{report}/combined"], 2, "--out {report}/combined: in one of the reports it"),
    (["report", "{broken}"], 2, "{broken}/metrics.json: not JSON"),
    (["report", "{empty}"], 2, "{empty}/metrics.json: no evaluated models in it"),
    (["report", "{nowhere}"], 2, "{nowhere}: no metrics.json (expected a report folder"),
    (["report", "{store}/runs/student-kd-0123"], 2, "no metrics.json"),
    # -- a stage command whose inputs are not committed: which stage to run, before Ray starts
    (["distill", "{job}"], 2, "the teacher output is not committed ({store0}/runs/teacher-"),
    (["distill", "{job}"], 2, "run the 'train_teacher' stage first (distkd train-teacher {job})"),
    (["evaluate", "{job}"], 2, "run the 'train_teacher' stage first"),
    (["softlabels", "{job}"], 2, "run the 'train_teacher' stage first"),
    # -- distkd sweep: a --grid value that is not YAML
    (["sweep", "{job}", "--grid", "student.train.lr=[0.1"], 2, "--grid student.train.lr: '[0.1' is not a YAML value"),
    (["sweep", "{job}", "--grid", "teacher.train.lr=0.1,0.2"], 2, "--grid teacher.train.lr: a sweep trains students"),
    # -- a cache entry that is a link out of the store
    (["cache", "rm", "f" * 32, "--store", "{store}"], 2, "a link out of the store"),
    # -- issue 16 and earlier rounds: keys that are not keys, missing arguments, missing inputs
    (["cache", "rm", "..", "--store", "{store}"], 2, "'..' is not a soft-label cache key"),
    (["cache", "rm", "", "--store", "{store}"], 2, "'' is not a soft-label cache key"),
    (["cache", "show", "0" * 32, "--store", "{store}"], 2, "no such cache entry (see: distkd cache ls"),
    (["cache", "verify", KEY.upper(), "--store", "{store}"], 2, "is not a soft-label cache key"),
    (["cache", "show", "--store", "{store}"], 2, "the following arguments are required: key"),
    (["cache", "purge", "--store", "{store}"], 2, "invalid choice: 'purge'"),
    (["jobs", "status", "--address", "http://127.0.0.1:1"], 2, "jobs status needs a submission ID"),
    (["jobs", "status", "raysubmit_1", "--address", "http://127.0.0.1:1"], 2, "--address http://127.0.0.1:1: no Ray"),
    (["submit", "{file}", "--address", "http://127.0.0.1:1"], 2, "{file}"),
    (["submit", "{unknown_optimizer}", "--address", "http://127.0.0.1:1"], 2, "key 'student.train.optimizer'"),
    (["pipeline", "{nowhere}"], 2, "{nowhere}"),
    (["plan", "{file}"], 2, "{file}"),
    (["export", "{nowhere}", "--format", "export"], 2, "not a committed run folder"),
    (["export", "{store}/runs/student-kd-0123", "--format", "png"], 2, "invalid choice: 'png'"),
    (["prepare", "image-folder", "{nowhere}", "{code}/out", "--split", "train"], 2, "{nowhere}: no such folder"),
    (["prepare", "image-folder", "{code}", "s3:/b/out", "--split", "train"], 2, "OUT: s3:/b/out: malformed URI"),
    (["train-teacher"], 2, "the following arguments are required: job"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory, cifar10) -> dict[str, str]:
    root = tmp_path_factory.mktemp("refusals")
    store = made_store(root / "store")
    code = root / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "notes.txt").write_text("a file\n")
    for name, metrics in {"broken": b'{"models": [', "empty": b"{}"}.items():
        (root / name).mkdir()
        (root / name / "metrics.json").write_bytes(metrics)
    job = write_job(root, cifar10, store=str(root / "empty-store"))
    (root / "unknown-optimizer").mkdir()
    unknown_optimizer = write_job(root / "unknown-optimizer", cifar10, student__train__optimizer={"name": "lion"})
    return {
        "store": str(store),
        "store0": str(root / "empty-store"),
        "report": str(store / "reports" / "def"),
        "file": str(root / "notes.txt"),
        "code": str(code),
        "nowhere": str(root / "nowhere"),
        "job": str(job),
        "broken": str(root / "broken"),
        "empty": str(root / "empty"),
        "unknown_optimizer": str(unknown_optimizer),
    }


def made_store(root: Path) -> Path:
    """The cache commands' store by hand (a committed soft-label entry and its shard, an uncommitted one, a run),
    with a committed run and a committed report, and an entry folder that is a link out of the store."""
    hand_made_store(root)
    metrics = {"title": "t", "models": [{"name": "lenet5 distilled", "role": "distilled"}]}
    files = {
        "runs/student-kd-0123/model.pt": b"weights",
        f"runs/student-kd-0123/{storage.COMMIT_MARKER}": b"",
        "reports/def/metrics.json": json.dumps(metrics).encode(),
        "reports/def/report.md": b"# the committed report\n",
        f"reports/def/{storage.COMMIT_MARKER}": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    elsewhere = root.parent / "elsewhere-entry"
    elsewhere.mkdir()
    (elsewhere / "manifest.json").write_bytes(b"{}")
    os.symlink(elsewhere, root / "softlabels" / ("f" * 32))
    return root


@pytest.mark.parametrize(("argv", "code", "phrase"), ROWS, ids=[" ".join(r[0])[:60] for r in ROWS])
def test_a_bad_command_is_refused_in_one_line(places, capsys, ray_watch, argv, code, phrase):
    argv = [a.format(**places) for a in argv]
    assert cli.main(argv) == code
    out, err = capsys.readouterr()
    assert phrase.format(**places) in err
    assert "Traceback" not in out + err and SECRET not in out + err
    assert not ray_watch.joined(), ray_watch.joins


def test_each_error_type_the_table_names_is_one(places):
    """EXIT_CODES names its types by module and name: each must be an exception class there."""
    for module, name in cli.EXIT_CODES:
        error = getattr(importlib.import_module(module), name)
        assert issubclass(error, Exception) and (error.__module__, error.__qualname__) == (module, name), (module, name)


def test_ray_wrapped_errors_are_reported_by_what_raised_in_the_task():
    """A Ray task's error (whose message holds the task's traceback) is reported as what raised in it; a bad row
    behind a Ray Train failure (``worker_failures``) as that row's DataError."""
    from ray.exceptions import RayTaskError

    from distkd.data.source import DataError
    from distkd.softlabels.cache import CacheError

    shard = CacheError("shard 3: checksum mismatch")
    wrapped = RayTaskError("write", "Traceback (most recent call last): ...", shard).as_instanceof_cause()
    assert cli.cause(wrapped) is shard
    bad = DataError("train-00000.parquet row 7: not an image")
    failed = RuntimeError("Training failed")
    failed.worker_failures = {0: RayTaskError("train", "Traceback ...", bad).as_instanceof_cause()}
    assert cli.cause(failed) is bad
    assert cli.cause(ValueError("a bug")).args == ("a bug",) and cli.reported_as(ValueError("a bug")) is None


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, links followed (what a deleting command could reach)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("linked", ["softlabels/shards", f"softlabels/shards/{TEACHER}", "softlabels"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_gc_never_touches_what_a_link_in_the_store_points_to(tmp_path, capsys, linked, dry_run):
    """With a folder of the cache a link to a folder outside the store, gc lists and removes nothing there."""
    store = made_store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"{'9' * 32}.parquet").write_bytes(b"someone else's data")
    (outside / storage.temporary_name("notes.parquet")).write_bytes(b"someone else's half-written file")
    target = store / linked
    os.rename(target, outside / "moved")  # what was in the store's folder now lies outside, behind the link
    os.symlink(outside, target)
    before = digests(tmp_path)
    code = cli.main(["cache", "gc", "--store", str(store), "--older-than", "0", *(["--dry-run"] if dry_run else [])])
    out, err = capsys.readouterr()
    assert digests(tmp_path) == before
    assert str(outside) not in out and "Traceback" not in out + err
    if linked == "softlabels":  # the whole cache is elsewhere: gc refuses (its own lease would be written there)
        assert code == 2 and "a link out of the store" in err
    else:
        assert code == 0 and out.splitlines()[-1].startswith("0 would be removed" if dry_run else "0 removed")


def test_report_never_rewrites_a_committed_report(places, capsys):
    report = Path(places["report"])
    before = digests(report.parent)
    assert cli.main(["report", str(report), "--out", str(report)]) == 2
    assert cli.main(["report", str(report), "--out", str(report / ".." / "def")]) == 2
    assert digests(report.parent) == before
    assert capsys.readouterr().err.count("a committed report is there") == 2
