"""Store locations as strings: local paths and URIs (``s3://`` and what pyarrow opens), validated, made
absolute, joined, resolved to a pyarrow filesystem, and written into messages without credentials."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")  # what pyarrow's from_uri opens
CREDENTIAL_PARAMETERS = {"access_key", "secret_key", "session_token"}  # pyarrow reads these from a query


class URIError(ValueError):
    """A string that cannot name a location in a store."""


class StorageError(OSError):
    """A location that cannot be read or written; the message names the URI and the cause."""


def validate(uri: str) -> str:
    """``uri`` unchanged if it is a local path or a well-formed URI without credentials in it."""
    scheme, colon, rest = uri.partition(":")
    if not colon or len(scheme) < 2 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return uri  # a local path
    if not rest.startswith("//"):
        raise URIError(f"{uri}: malformed URI: expected '{scheme}://' (two slashes) or a local path")
    if scheme.lower() not in SCHEMES:
        raise URIError(f"{uri}: unknown scheme '{scheme}://' (expected a local path or {', '.join(SCHEMES)})")
    parts = urlsplit(uri)
    if "@" in parts.netloc or CREDENTIAL_PARAMETERS & parse_qs(parts.query).keys():
        raise URIError(
            f"{redact(uri)}: credentials in a URI are refused (they would end up in logs and manifests); "
            "give each node its own through its environment, profile or instance role"
        )
    if scheme != "file" and not parts.netloc:
        raise URIError(f"{uri}: no bucket or host after '{scheme}://'")
    return uri


def validate_named(name: str) -> str:
    """``name`` unchanged if the URI in it, if any (a model or tokenizer name such as ``hf:s3://bucket/model``),
    passes ``validate``."""
    if found := re.search(r"[A-Za-z][A-Za-z0-9+.-]*://", name):
        validate(name[found.start() :])
    return name


def redact(text: str) -> str:
    """``text`` with the credentials of any URI in it (user and password, key parameters) replaced by ``***``."""
    text = re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)
    return re.sub(rf"\b({'|'.join(CREDENTIAL_PARAMETERS)})=[^&\s'\"]*", r"\1=***", text)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def absolute(uri: str) -> str:
    """Local paths become absolute (Ray workers do not share the driver's cwd)."""
    if is_remote(uri):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for ``uri``."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), absolute(uri)
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def bucket_key(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    return parts.netloc, parts.path.lstrip("/")
