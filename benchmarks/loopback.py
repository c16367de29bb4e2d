"""Imported by ``common`` before Ray is: a local Ray instance a benchmark starts binds 127.0.0.1 only, as the
``distkd`` command's does (``distkd.address.loopback_only`` must run before the first ``import ray``)."""

from distkd import address

address.loopback_only(None)
