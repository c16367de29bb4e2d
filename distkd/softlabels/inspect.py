"""``distkd cache``: list, show, verify and remove soft-label cache entries, and writers' leftovers."""

from __future__ import annotations

import json

from distkd import labelstore, storage
from distkd.data.source import Split
from distkd.softlabels import cache


def listing(store: str) -> list[dict]:
    rows = []
    for entry in labelstore.entries(store):
        m = labelstore.manifest(entry)
        fmt = m.format
        rows.append(
            {
                "key": m.key,
                "teacher": m.inputs["teacher"]["name"],
                "dataset": f"{m.inputs['data']['uri']} [{m.inputs['data']['split']}]",
                "format": f"{fmt.layout}{'-' + str(fmt.top_k) if fmt.top_k else ''} {fmt.dtype}"
                + (f" x{m.views} views" if m.views else ""),
                "rows": m.rows,
                "size": m.bytes,
                "created": m.created,
            }
        )
    return rows


def format_listing(rows: list[dict]) -> str:
    header = ("key", "teacher", "dataset", "format", "rows", "size", "created")
    table = [header, *[tuple(str(r[h]) for h in header) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table)


def format_leftovers(store: str) -> str:
    """The temporary files and unfinished uploads under the cache, one a line after a heading; "" if none."""
    found = cache.leftovers(store)
    if not found:
        return ""
    lines = [f"  {f.kind:<16}  {f.age_seconds / 60:8.1f} min  {f.uri}" for f in found]
    return "\n".join([f"\nleftovers of interrupted writes (distkd cache gc --store {store}):", *lines]) + "\n"


def collect_garbage(store: str, older_than: float, dry_run: bool = False) -> str:
    """What gc removed (or would remove): writers' leftovers, and shards no committed entry lists."""
    garbage = cache.collect_garbage(store, older_than, dry_run)
    verb = "would remove" if dry_run else "removed"
    freed = f" ({len(garbage.shards)} unlisted shards, {garbage.shard_bytes} bytes freed)" if garbage.shards else ""
    return "\n".join(
        [
            *(f"{verb} {f.kind} {f.uri}" for f in garbage.leftovers),
            *(f"{verb} unlisted shard {s.uri} ({s.bytes} bytes)" for s in garbage.shards),
            *(f"a writer is running (lease {w}): gc would refuse now" for w in garbage.writers),
            f"{len(garbage.leftovers) + len(garbage.shards)} {'would be removed' if dry_run else 'removed'}{freed}, "
            f"{garbage.younger} younger than {older_than:g} s kept",
        ]
    )


def show(store: str, key: str) -> str:
    return json.dumps(labelstore.manifest(cache.entry_folder(store, key)).to_json(), indent=2)


def verify(store: str, key: str) -> str:
    """Rows, checksums, and ids unique and complete against the dataset the entry was made from."""
    entry = cache.entry_folder(store, key)
    data = labelstore.manifest(entry).inputs["data"]
    split = Split.open(data["uri"], data["split"], data["limit"])
    if split.fingerprint() != data["fingerprint"]:
        raise labelstore.CacheError(f"{entry}: the dataset at {data['uri']} changed since this entry was made")
    info = cache.verify(entry, split.read_table(["id"])["id"].to_pylist())
    return f"{key}: ok ({info.rows} rows in {len(info.shards)} shards, checksums match, every id exactly once)"


def remove(store: str, key: str) -> str:
    """Remove entry ``key``, committed or not; only a key's own folder can be named (``cache.entry_folder``)."""
    entry = cache.entry_folder(store, key)
    storage.remove(storage.join(entry, storage.COMMIT_MARKER))  # first: readers stop seeing an entry
    storage.remove(entry)
    return f"removed {entry}"
