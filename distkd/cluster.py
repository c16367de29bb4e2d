"""Joining a Ray cluster, or starting a local instance that listens on 127.0.0.1 only.

Ray and the address rules only, no stage code: the command, the sweep and the tests import it for this alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ray

from distkd import address as ray_address
from distkd.config import ConfigError

# Where the store is, never who may use it: Ray writes a runtime_env in plain text to every node's logs,
# so credentials stay with each node (its environment, profile or instance role).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")


# A local instance of its own (never another user's `ray start` cluster on this machine), every server on
# the loopback interface, no dashboard (for Ray jobs, start a cluster with `ray start`: cluster/README.md).
LOCAL = {"address": "local", "_node_ip_address": "127.0.0.1", "include_dashboard": False}


def loopback_only() -> None:
    """Refuse to start a local instance that would listen beyond 127.0.0.1: Ray resolves that node address to
    the machine's own (so that other nodes could reach it) unless this process had clusters off when it
    imported Ray (``address.loopback_only``, which the ``distkd`` command calls first); the Ray processes it
    starts inherit the setting."""
    if (ip := ray.util.get_node_ip_address()) != LOCAL["_node_ip_address"]:
        raise RuntimeError(
            f"a local Ray instance started here would listen on {ip}, not on 127.0.0.1 only: set "
            f"{ray_address.CLUSTERS_ENV}=0 before Ray is imported (distkd.address.loopback_only), "
            "or join a cluster (ray_address)"
        )


def joinable(address: str, source: str) -> None:
    """Raise ConfigError naming ``source`` (the key or variable that gave ``address``) where the address is
    malformed or nothing answers at it, before ray.init would retry it for minutes."""
    if problem := ray_address.malformed(address) or ray_address.unreachable(address):
        raise ConfigError(f"{source}: {problem}")


def connect(address: str | None, code: Sequence[str] = (), **init_options: object) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local one that listens on 127.0.0.1 only
    (``init_options``: more ``ray.init`` arguments). Joining a cluster ships the job's ``code:`` to every
    node (``py_modules``; ``distkd submit`` ships it in the working_dir); a local instance's workers read it
    where it is."""
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k in FORWARDED_ENV}
        runtime_env: dict[str, object] = {"env_vars": env} if env else {}
        joined = ray_address.effective(address)
        if ray_address.is_local(joined):
            loopback_only()
            where = LOCAL
        else:
            joinable(joined, "key 'ray_address'" if address else "$RAY_ADDRESS")
            where = {"address": joined}
            if code:
                runtime_env["py_modules"] = list(code)
        ray.init(runtime_env=runtime_env or None, **where, **init_options)
    # a DataError from a task reaches the driver as itself
    ray.data.DataContext.get_current().raise_original_map_exception = True
