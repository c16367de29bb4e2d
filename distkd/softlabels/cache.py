"""The soft-label store: shards shared by their inputs, and one entry per data snapshot.

A shard (``id``, the teacher's outputs in the entry's format, and the ``views`` parameters when
views were recorded) lies at ``<store>/softlabels/shards/<teacher key>/<hash>.parquet``: the teacher
key holds every setting that changes the outputs (``SoftLabelSpec.teacher_key``), the hash adds the
sha256 of the data file the shard's rows come from and their row range (units never cross files).
So any snapshot that holds those rows reuses the shard: a grown dataset labels its new files only.
An entry ``<store>/softlabels/<key>/`` is ``manifest.json`` (the key's inputs in readable form, rows
and a checksum per shard, listed relative to the entry, timings) and the commit marker, last:
without the marker there is no entry. Shards, manifest and marker are published create-if-absent
(``storage.publish``): writers never replace each other's files, so whatever a manifest lists stays
as it was checked. ``cache gc`` removes shards that no committed manifest lists (``leases``).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from distkd import __version__, content, storage
from distkd.config import ConfigError
from distkd.data.source import Unit
from distkd.hashing import digest
from distkd.labelstore import (
    MANIFEST,
    CacheError,
    Manifest,
    ShardMismatch,
    ShardMissing,
    ShardRecord,
    check_ids,
    entries,
    errors,
    manifest,
    read_shard,
    record_of,
    shard_uri,
)
from distkd.softlabels import leases
from distkd.specs import FORMAT_VERSION, SoftLabelSpec, recorded

SHARDS = "shards"  # <store>/softlabels/shards/<teacher key>/: every entry's shards

KEY = re.compile(r"[0-9a-f]{32}")  # SoftLabelSpec.key: digest(..., length=32)


def shard_file(spec: SoftLabelSpec, unit: Unit) -> str:
    """Where ``unit``'s shard lies, relative to the entry: named by the teacher key and a hash of the unit's
    inputs (the sha256 of its file's bytes and its row range), never by the unit's place in the split."""
    inputs = {"teacher": spec.teacher_key, "file_sha256": content.sha256(unit.file), "rows": [unit.start, unit.stop]}
    return f"../{SHARDS}/{spec.teacher_key}/{digest(inputs, length=32)}.parquet"


def write_shard(entry: str, file: str, table: pa.Table, expected_ids: list[str]) -> ShardRecord:
    """Encode and publish one shard (``file``, relative to ``entry``) under its final name, create-if-absent,
    once ``table`` proves to hold exactly ``expected_ids`` (its unit's, in order); returns its record (file,
    rows, bytes, sha256). Called wherever a shard is computed (the driver or a worker). Readers see a shard
    whole or not at all, and a shard that another writer (of this entry or of any snapshot with the same
    rows) published first is kept, not replaced, and its record returned once it passes the same check, so
    the checksums any writer's manifest takes stay true. A torn or foreign file in the way is removed and
    the shard published anew."""
    uri = shard_uri(entry, file)
    check_ids(uri, table["id"].to_pylist(), expected_ids)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue().to_pybytes()
    for _ in range(3):
        with errors(uri):
            if storage.publish(uri, data):
                return record_of(file, data, len(expected_ids))
        existing = trusted_shard(entry, file, expected_ids)
        if existing is not None:
            return existing
    raise CacheError(f"{uri}: other writers keep publishing shards that do not hold this shard's ids")


def trusted_shard(entry: str, file: str, expected_ids: list[str]) -> ShardRecord | None:
    """The record of shard ``file`` if it is there and passes ``read_shard``'s check. A file under its name
    that fails it (torn by a crash, or foreign) is removed so that the shard can be published again, and
    None returned, as for a shard that is not there."""
    try:
        return read_shard(entry, file, expected_ids, columns=["id"])[1]
    except ShardMissing:
        return None
    except ShardMismatch as e:
        print(f"[softlabels] {e}; removing it to compute the shard again", flush=True)
    uri = shard_uri(entry, file)
    with errors(uri):
        storage.remove(uri)
    return None


def commit(
    spec: SoftLabelSpec, shards: tuple[ShardRecord, ...], computed_shards: int, rows: int, seconds: float
) -> Manifest:
    """Publish the manifest from the shards' records (in shard order), then the commit marker. The
    writers of the shards checked each one's ids against its rows of the dataset, so the records are
    all the driver needs. When another writer of the key published its manifest first, that one is
    kept (its shards are the same files) and returned.

    ``computed_shards``, ``rows`` and ``seconds`` say what this job did (the other shards were there)."""
    entry, positions = spec.uri, spec.task.positions(spec.inputs)
    manifest = Manifest(
        key=spec.key,
        format_version=FORMAT_VERSION,
        inputs=recorded(spec),
        shards=tuple(shards),
        rows=sum(s.rows for s in shards),
        bytes=sum(s.bytes for s in shards),
        computed_shards=computed_shards,
        teacher_rows=rows,
        teacher_seconds=round(seconds, 3),
        rows_per_second=round(rows / seconds, 1) if rows else None,
        distkd_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        unit=spec.task.unit,
        positions=positions,
        bytes_per_unit=round(sum(s.bytes for s in shards) / max(1, sum(s.rows for s in shards) * positions), 3),
    )
    uri = storage.join(entry, MANIFEST)
    with errors(uri):
        if not storage.publish(uri, storage.encode_json(manifest.to_json())):
            manifest = Manifest.from_json(storage.read_json(uri))
            if manifest.shards != tuple(shards):
                raise CacheError(
                    f"{uri}: another writer's manifest lists other shards than the entry holds; "
                    f"remove the entry (distkd cache rm {manifest.key}) and run again"
                )
        storage.commit(entry)
    return manifest


def check_shards(entry: str, shards: list[ShardRecord] | tuple[ShardRecord, ...], expected_ids: list[str]) -> None:
    """Every shard passes ``read_shard``'s check against its record, and the shards together hold each of
    ``expected_ids`` exactly once."""
    counts: Counter[str] = Counter()
    for shard in shards:
        counts.update(read_shard(entry, shard.file, None, shard, columns=["id"])[0]["id"].to_pylist())
    duplicated = [i for i, n in counts.items() if n > 1]
    missing = set(expected_ids) - counts.keys()
    extra = counts.keys() - set(expected_ids)
    if duplicated or missing or extra:
        raise CacheError(
            f"{entry}: ids do not match the dataset: {len(duplicated)} duplicated, {len(missing)} missing, "
            f"{len(extra)} unexpected (e.g. {sorted([*duplicated, *missing, *extra])[:3]})"
        )


def verify(entry: str, expected_ids: list[str]) -> Manifest:
    """The entry's manifest, after checking every shard's rows and checksum and the ids against the dataset."""
    info = manifest(entry)
    check_shards(entry, info.shards, expected_ids)
    return info


def manifests(store: str) -> list[Manifest]:
    """The manifests of the committed entries under ``<store>/softlabels``, oldest first."""
    return sorted((manifest(e) for e in entries(store)), key=lambda m: m.created)


@dataclass(frozen=True)
class ShardPlan:
    """A snapshot's units, each unit's shard, and which of those shards the store holds already."""

    units: tuple[Unit, ...]
    files: tuple[str, ...]  # unit i's shard, relative to the entry
    listed: dict[int, tuple[ShardRecord, str]]  # unit -> its record in the latest committed entry listing it, that key
    present: frozenset[int]  # units whose shard is there but that no committed entry lists: a writer checks it

    @property
    def rows(self) -> int:
        return sum(u.rows for u in self.units)

    @property
    def to_write(self) -> list[Unit]:
        """The units a teacher actor sees: those no committed entry lists (a present shard is checked, and
        labelled again only if it fails)."""
        return [u for u in self.units if u.index not in self.listed]

    @property
    def to_label(self) -> int:
        """Rows the teacher will run on (the units whose shard is not there at all)."""
        return sum(u.rows for u in self.to_write if u.index not in self.present)

    def reused_from(self) -> dict[str, int]:
        """Key of an earlier entry -> how many of this snapshot's shards are reused from it."""
        return dict(Counter(key for _, key in self.listed.values()))


def shard_plan(spec: SoftLabelSpec) -> ShardPlan:
    """Each unit's shard and what the store holds of them: a shard that a committed manifest lists (and that is
    there, of the listed size) is reused with that record, unread; one only present is left to a writer."""
    units = tuple(spec.data.units(spec.shard_rows))
    files = tuple(shard_file(spec, u) for u in units)
    latest: dict[str, tuple[ShardRecord, str]] = {}
    for m in manifests(spec.store):  # oldest first: the latest entry listing a shard names it
        latest.update({s.file: (s, m.key) for s in m.shards})
    sizes = _sizes(storage.join(spec.store, "softlabels", SHARDS, spec.teacher_key))
    listed, present = {}, set()
    for unit, file in zip(units, files):
        size = sizes.get(file.rsplit("/", 1)[1])
        if size is not None and file in latest and latest[file][0].bytes == size:
            listed[unit.index] = latest[file]
        elif size is not None:
            present.add(unit.index)
    return ShardPlan(units, files, listed, frozenset(present))


def _sizes(folder: str) -> dict[str, int]:
    """Name -> bytes of the (not hidden) files directly under ``folder``, in one listing."""
    fs, path = storage.resolve(folder)
    with errors(folder):
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {i.base_name: i.size for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(".")}


def entry_folder(store: str, key: str) -> str:
    """The folder of entry ``key``, committed or not, after checking that ``key`` is a key as the cache
    writes it and names a folder directly under ``<store>/softlabels``: a name such as ``..`` or ``""``
    would otherwise reach the whole store or the whole cache. Raises ``ConfigError`` otherwise."""
    if not KEY.fullmatch(key):
        raise ConfigError(
            f"{key!r} is not a soft-label cache key (expected 32 lowercase hex characters, "
            f"as listed by: distkd cache ls --store {store})"
        )
    root = storage.join(store, "softlabels")
    folder = storage.join(root, key)
    with errors(root):
        if folder not in storage.list_folders(root):
            raise ConfigError(f"{folder}: no such cache entry (see: distkd cache ls --store {store})")
    if not _within(store, folder):
        raise ConfigError(f"{folder}: a link out of the store; cache commands touch only the store's own files")
    return folder


def leftovers(store: str) -> list[storage.Leftover]:
    """Temporary files and unfinished multipart uploads that writers of ``<store>/softlabels`` left behind;
    only those that really lie under it (not reached through a link to another folder)."""
    root = storage.join(store, "softlabels")
    with errors(root):
        return [leftover for leftover in storage.leftovers(root) if _within(store, leftover.uri)]


def _within(store: str, uri: str) -> bool:
    """Whether ``uri`` lies under ``<store>/softlabels`` once links are resolved: the store's own path may be a
    link, but nothing in it (``softlabels``, ``shards`` or a folder of shards) may lead out of it, so that what
    ``cache gc`` lists and removes is the store's alone."""
    root = storage.join(store, "softlabels")
    if storage.is_remote(store):
        return uri.startswith(root + "/") and ".." not in uri.split("/")
    return os.path.realpath(uri).startswith(os.path.join(os.path.realpath(store), "softlabels") + os.sep)


@dataclass(frozen=True)
class Unlisted:
    """A shard that no committed manifest lists."""

    uri: str
    bytes: int
    age_seconds: float


def unlisted_shards(store: str) -> list[Unlisted]:
    """The shards under ``<store>/softlabels/shards`` that no committed entry lists, oldest first (only those that
    really lie under it: ``_within``)."""
    root = storage.join(store, "softlabels", SHARDS)
    listed = {shard_uri(e, s.file) for e in entries(store) for s in manifest(e).shards}
    fs, path = storage.resolve(root)
    scheme = f"{urlsplit(root).scheme}://" if storage.is_remote(root) else ""
    with errors(root):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    now = time.time()
    found = [
        Unlisted(scheme + i.path, i.size, now - i.mtime.timestamp() if i.mtime else 0.0)
        for i in infos
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
    ]
    unlisted = (s for s in found if s.uri not in listed and _within(store, s.uri))
    return sorted(unlisted, key=lambda s: -s.age_seconds)


@dataclass(frozen=True)
class Garbage:
    """What ``collect_garbage`` removed (or, in a dry run, would remove)."""

    leftovers: list[storage.Leftover]
    shards: list[Unlisted]
    younger: int  # leftovers and unlisted shards kept for being younger than the grace period
    writers: list[str]  # leases of writers running now (a dry run lists them; a real one refuses)

    @property
    def shard_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)


def collect_garbage(store: str, older_than: float, dry_run: bool = False) -> Garbage:
    """Remove the leftovers and the unlisted shards older than ``older_than`` seconds (a younger one may be a
    writer's that has not committed yet). Refused while any writer of the store holds a fresh lease
    (``leases``): a running writer may be about to list a shard no manifest lists yet."""
    if not _within(store, storage.join(store, "softlabels", leases.COLLECTORS)):
        raise ConfigError(f"{store}/softlabels: a link out of the store; cache gc cleans only the store's own files")
    if dry_run:
        return _garbage(store, older_than, leases.fresh(store, leases.WRITERS))
    with leases.hold(store, leases.COLLECTORS):
        if running := leases.fresh(store, leases.WRITERS):
            raise CacheError(
                f"{store}: {len(running)} writer(s) of the soft labels running (lease {running[0]}, written in the "
                f"last {leases.STALE:g} s); cache gc removes nothing while one runs: try again once it is done"
            )
        garbage = _garbage(store, older_than, [])
        for leftover in garbage.leftovers:
            with errors(leftover.uri):
                storage.discard(leftover)
        for shard in garbage.shards:
            with errors(shard.uri):
                storage.remove(shard.uri)
    return garbage


def _garbage(store: str, older_than: float, writers: list[str]) -> Garbage:
    found, shards = leftovers(store), unlisted_shards(store)
    old = [f for f in found if f.age_seconds >= older_than], [s for s in shards if s.age_seconds >= older_than]
    return Garbage(*old, len(found) + len(shards) - len(old[0]) - len(old[1]), writers)
