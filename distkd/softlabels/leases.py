"""Who is working on a store's soft labels right now: the writers of entries, and ``cache gc``.

A holder publishes ``<store>/softlabels/<kind>/<uuid>`` and writes it again every HEARTBEAT seconds
while it runs; a lease not written for STALE seconds is a holder that died (a killed driver). Each
side writes its own lease before it looks for the other's, so of a writer and a collector that
start together at least one sees the other: the collector refuses to remove anything, the writer
waits until the collector is done. A writer holds its lease from before it looks for reusable shards
until its manifest and marker are committed, so no shard it relies on can be collected under it.
Ages are the store's modification times against this host's clock.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from distkd import storage

WRITERS, COLLECTORS = "writers", "collectors"
HEARTBEAT = 10.0  # seconds between a holder's writes of its lease
STALE = 60.0  # a lease not written for this long belongs to a holder that is gone


def folder(store: str, kind: str) -> str:
    return storage.join(store, "softlabels", kind)


@contextmanager
def hold(store: str, kind: str) -> Iterator[str]:
    """A lease of ``kind`` on ``store``'s soft labels, kept fresh by a thread until the block exits."""
    uri = storage.join(folder(store, kind), uuid.uuid4().hex)
    body = storage.encode_json({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    storage.write_bytes(uri, body)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            storage.write_bytes(uri, body)

    thread = threading.Thread(target=beat, name=f"distkd-lease-{kind}", daemon=True)
    thread.start()
    try:
        yield uri
    finally:
        stop.set()
        thread.join()
        storage.remove(uri)


def fresh(store: str, kind: str) -> list[str]:
    """The leases of ``kind`` written in the last STALE seconds."""
    fs, path = storage.resolve(folder(store, kind))
    scheme = f"{urlsplit(store).scheme}://" if storage.is_remote(store) else ""
    now = time.time()
    return [
        scheme + info.path
        for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        if info.type == pafs.FileType.File
        and not info.base_name.startswith(".")
        and info.mtime is not None
        and now - info.mtime.timestamp() < STALE
    ]


def wait_for_collectors(store: str, poll: float = 1.0) -> None:
    """Return once no ``cache gc`` of ``store`` runs (a dead one's lease goes stale within STALE seconds)."""
    if running := fresh(store, COLLECTORS):
        print(f"[softlabels] waiting for distkd cache gc to finish ({running[0]})", flush=True)
    while fresh(store, COLLECTORS):
        time.sleep(poll)
