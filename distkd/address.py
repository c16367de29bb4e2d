"""The job's Ray address: the forms ``ray.init`` takes, whether it means a local instance of distkd's own,
and whether anything answers at it. Imports no Ray: the loopback setting must be made before Ray is imported."""

from __future__ import annotations

import os
import re
import socket

# What ray_constants reads when Ray is imported: "0" makes a local instance's node address 127.0.0.1 (as on
# macOS and Windows) instead of the machine's address, so that every server binds the loopback interface.
CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
FORMS = "'auto', 'local', HOST:PORT (the head's GCS port, e.g. 10.0.0.1:6379) or ray://HOST:PORT (Ray Client)"
_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"  # [IPv6], IPv4 or a host name
_HOST_PORT = re.compile(rf"^(?:ray://)?(?P<host>{_HOST}):(?P<port>\d{{1,5}})$")
PROBE_SECONDS = 5.0


def effective(address: str | None) -> str | None:
    """The address a job joins: its own, else $RAY_ADDRESS; None (or 'local') starts a local instance."""
    return address or os.environ.get("RAY_ADDRESS") or None


def is_local(address: str | None) -> bool:
    return effective(address) in (None, "local")


def malformed(address: str) -> str | None:
    """Why ``address`` is no form ``ray.init`` takes, or None."""
    if address in ("auto", "local"):
        return None
    match = _HOST_PORT.match(address)
    if match is None or not 0 < int(match["port"]) < 65536:
        return f"not a Ray address: expected {FORMS}"
    return None


def unreachable(address: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why nothing can be joined at HOST:PORT (a TCP connect within ``timeout`` seconds), or None; 'auto' and
    'local' name no port to try."""
    match = _HOST_PORT.match(address)
    if match is None:
        return None
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = f"no answer in {timeout:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e)).lower()
        return f"nothing answers at {address} ({reason}): start the cluster (`ray start --head`) or fix the address"
    return None


def loopback_only(address: str | None) -> None:
    """For a local instance: have the Ray processes started from here bind 127.0.0.1 (read by each of them as it
    imports Ray, this one included: call before the first ``import ray``)."""
    if is_local(address):
        os.environ[CLUSTERS_ENV] = "0"
