"""The label store without Ray: shards named by their inputs, what a snapshot reuses, gc and the writers' leases.
Shards are written by hand (``tests.shard_writer.table``) through the cache's own write and commit."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distkd import labelstore
from distkd.cli import format_plan, main
from distkd.pipeline import Step
from distkd.softlabels import cache, leases
from distkd.softlabels.stage import describe
from distkd.specs import SoftLabelSpec
from tests.label_store import ROWS, catalogue, shard_files, snapshot, spec_for
from tests.shard_writer import table

files = pytest.fixture(scope="module")(catalogue)


def write_entry(spec: SoftLabelSpec) -> labelstore.Manifest:
    """Every shard the plan does not list, written by hand; then the manifest and marker."""
    plan = cache.shard_plan(spec)
    ids = spec.data.read_table(["id"])["id"].to_pylist()
    records = []
    for unit, file in zip(plan.units, plan.files):
        if unit.index in plan.listed:
            records.append(plan.listed[unit.index][0])
        else:
            unit_ids = ids[unit.offset : unit.offset + unit.rows]
            records.append(cache.write_shard(spec.uri, file, table(unit_ids, 1.0, 10), unit_ids))
    return cache.commit(spec, tuple(records), 0, 0, 1.0)


def test_a_shard_is_named_by_its_teacher_file_bytes_and_rows_not_by_its_place(files, tmp_path):
    store = tmp_path / "store"
    a = spec_for(snapshot(tmp_path / "a", files, "train-0", "train-1"), store)
    b = spec_for(snapshot(tmp_path / "b", files, "train-1"), store)  # train-1 is unit 3.. in a, unit 0 in b
    assert a.key != b.key and a.teacher_key == b.teacher_key
    assert cache.shard_file(a, a.data.units(25)[3]) == cache.shard_file(b, b.data.units(25)[0])
    assert len({cache.shard_file(a, u) for u in a.data.units(25)}) == 6  # 3 units per file, all distinct
    other = spec_for(snapshot(tmp_path / "c", files, "train-0", "train-1"), store, shard_rows=20)
    assert other.teacher_key == a.teacher_key and other.key != a.key  # same teacher, other units
    assert cache.shard_file(a, a.data.units(25)[0]).startswith(f"../shards/{a.teacher_key}/")


def test_shard_uri_resolves_the_entry_relative_name_for_object_stores_too():
    assert (
        labelstore.shard_uri("s3://b/st/softlabels/k", "../shards/t/h.parquet")
        == "s3://b/st/softlabels/shards/t/h.parquet"
    )
    assert labelstore.shard_uri("/st/softlabels/k", "shards/part-0.parquet") == "/st/softlabels/k/shards/part-0.parquet"


def test_a_grown_snapshot_labels_only_its_new_file_and_names_the_entry_it_reuses(files, tmp_path):
    store = tmp_path / "store"
    first = write_entry(spec_for(snapshot(tmp_path / "a", files, "train-0", "train-1"), store))
    before = shard_files(store)
    grown = spec_for(snapshot(tmp_path / "b", files, "train-0", "train-1", "train-2"), store)
    plan = cache.shard_plan(grown)
    assert (plan.to_label, plan.rows) == (ROWS, 3 * ROWS)
    assert [u.file for u in plan.to_write] == [str(tmp_path / "b" / "train-00002.parquet")] * 3
    assert plan.reused_from() == {first.key: 6}
    assert describe(plan, grown) == f"60 of 180 rows to label (9 shards; shards reused: 6 from {first.key})"
    step = Step("softlabels", "softlabels", grown.uri, "compute", describe(plan, grown))
    assert format_plan([step]).splitlines()[1].strip().startswith("60 of 180 rows to label")

    second = write_entry(grown)
    after = shard_files(store)
    assert {k: after[k] for k in before} == before and len(after) == 9  # earlier shards' bytes untouched
    assert [s.file for s in second.shards][:6] == [s.file for s in first.shards]
    shrunk = cache.shard_plan(spec_for(snapshot(tmp_path / "c", files, "train-0", "train-2"), store))
    assert shrunk.to_label == 0 and shrunk.to_write == []  # a removed file: no teacher run
    assert sum(shrunk.reused_from().values()) == 6

    changed = tmp_path / "d"
    snapshot(changed, files, "train-0", "train-1")
    replaced = pq.read_table(files["train-3"])  # other bytes and ids under train-1's name
    os.unlink(changed / "train-00001.parquet")
    pq.write_table(replaced, changed / "train-00001.parquet")
    plan = cache.shard_plan(spec_for(changed, store))
    assert plan.to_label == ROWS and {u.file for u in plan.to_write} == {str(changed / "train-00001.parquet")}


def test_a_present_shard_that_no_entry_lists_is_left_to_a_writer_to_check(files, tmp_path):
    store = tmp_path / "store"
    spec = spec_for(snapshot(tmp_path / "a", files, "train-0"), store)
    plan = cache.shard_plan(spec)
    ids = spec.data.read_table(["id"])["id"].to_pylist()
    cache.write_shard(
        spec.uri, plan.files[1], table(ids[25:50], 1.0, 10), ids[25:50]
    )  # as a job that died before committing
    plan = cache.shard_plan(spec)
    assert plan.present == {1} and plan.to_label == ROWS - 25 and len(plan.to_write) == 3


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_gc_removes_only_unlisted_shards_past_the_grace_period_and_dry_run_removes_nothing(files, tmp_path, capsys):
    store = tmp_path / "store"
    kept = write_entry(spec_for(snapshot(tmp_path / "a", files, "train-0", "train-1"), store))
    gone = write_entry(spec_for(snapshot(tmp_path / "b", files, "train-1", "train-2"), store))
    for path in shard_files(store):
        age(Path(path), 7200)
    assert main(["cache", "rm", gone.key, "--store", str(store)]) == 0  # its own shards stay: shared, maybe
    only_gone = [s for s in gone.shards if s.file not in {k.file for k in kept.shards}]
    assert len(only_gone) == 3 and len(shard_files(store)) == 9
    young = Path(labelstore.shard_uri(str(store / "softlabels" / kept.key), kept.shards[0].file)).with_name(
        "new.parquet"
    )
    young.write_bytes(b"written a moment ago")
    capsys.readouterr()

    before = shard_files(store)
    assert main(["cache", "gc", "--dry-run", "--store", str(store)]) == 0
    printed = capsys.readouterr().out
    freed = sum(s.bytes for s in only_gone)
    assert f"3 would be removed (3 unlisted shards, {freed} bytes freed), 1 younger than 3600 s kept" in printed
    assert all(labelstore.shard_uri(str(store / "softlabels" / gone.key), s.file) in printed for s in only_gone)
    assert shard_files(store) == before

    assert main(["cache", "gc", "--store", str(store)]) == 0
    assert set(shard_files(store)) == set(before) - {
        labelstore.shard_uri(str(store / "softlabels" / gone.key), s.file) for s in only_gone
    }
    assert young.exists()
    assert "ok (120 rows in 6 shards" in main_out(["cache", "verify", kept.key, "--store", str(store)], capsys)


def main_out(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_gc_refuses_while_a_writer_holds_a_fresh_lease_and_ignores_a_stale_one(files, tmp_path, capsys):
    store = tmp_path / "store"
    spec = spec_for(snapshot(tmp_path / "a", files, "train-0"), store)
    plan = cache.shard_plan(spec)
    ids = spec.data.read_table(["id"])["id"].to_pylist()
    orphan = labelstore.shard_uri(spec.uri, plan.files[0])
    cache.write_shard(spec.uri, plan.files[0], table(ids[:25], 1.0, 10), ids[:25])  # a writer's, not yet committed
    age(Path(orphan), 7200)
    with leases.hold(str(store), leases.WRITERS) as lease:
        assert main(["cache", "gc", "--store", str(store)]) == 1
        assert "1 writer(s) of the soft labels running" in capsys.readouterr().err
        assert main(["cache", "gc", "--dry-run", "--store", str(store)]) == 0
        assert f"a writer is running (lease {lease})" in capsys.readouterr().out
        assert Path(orphan).exists()
        age(Path(lease), leases.STALE + 1)  # its holder died (no heartbeat since)
        assert main(["cache", "gc", "--store", str(store)]) == 0
    assert not Path(orphan).exists()
    assert not list((store / "softlabels" / leases.COLLECTORS).iterdir())  # gc's own lease is gone


def test_a_lease_is_written_again_while_held_and_removed_after(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "HEARTBEAT", 0.05)
    store = str(tmp_path)
    with leases.hold(store, leases.WRITERS) as lease:
        age(Path(lease), leases.STALE + 1)
        assert leases.fresh(store, leases.WRITERS) == []
        time.sleep(0.3)
        assert leases.fresh(store, leases.WRITERS) == [lease]
    assert leases.fresh(store, leases.WRITERS) == [] and not Path(lease).exists()


def test_a_writer_waits_for_a_running_collector(tmp_path, monkeypatch):
    store = str(tmp_path)
    with leases.hold(store, leases.COLLECTORS) as lease:
        started = time.monotonic()
        monkeypatch.setattr(time, "sleep", lambda s: age(Path(lease), leases.STALE + 1))  # the collector dies
        leases.wait_for_collectors(store)
        assert time.monotonic() - started < 5


def test_every_reader_of_a_shard_makes_the_one_check(tmp_path):
    """``read_shard`` is the check every reader makes (the writer's reuse, ``cache verify``, streamed
    training): each way a shard can be wrong is refused with its URI, and ``write_shard`` refuses to publish
    rows that are not its unit's."""
    entry, file, ids = str(tmp_path / "softlabels" / ("0" * 32)), f"../{cache.SHARDS}/t/s.parquet", ["a", "b"]
    uri = labelstore.shard_uri(entry, file)
    with pytest.raises(labelstore.ShardMismatch, match=f"^{uri}: its ids are not this shard's"):
        cache.write_shard(entry, file, table(["b", "a"], 1.0, 10), ids)
    with pytest.raises(labelstore.ShardMissing, match=f"^{uri}: shard is missing"):
        labelstore.read_shard(entry, file, ids)
    record = cache.write_shard(entry, file, table(ids, 1.0, 10), ids)
    assert labelstore.read_shard(entry, file, ids, record)[1] == record
    refusals = [
        ("its ids are not this shard's", ["a", "c"], record),
        ("checksum does not match the manifest", ids, dataclasses.replace(record, sha256="0" * 64)),
        ("2 rows, the manifest says 3", ids, dataclasses.replace(record, rows=3)),
    ]
    for problem, expected, claimed in refusals:
        with pytest.raises(labelstore.ShardMismatch, match=f"^{uri}: {problem}"):
            labelstore.read_shard(entry, file, expected, claimed)
    Path(uri).write_bytes(b"torn")
    with pytest.raises(labelstore.ShardMismatch, match=f"^{uri}: unreadable"):
        labelstore.read_shard(entry, file, ids)
    assert cache.trusted_shard(entry, file, ids) is None and not Path(uri).exists()  # removed to be written again
