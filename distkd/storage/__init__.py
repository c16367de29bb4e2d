"""One view of every store: local folders and anything pyarrow speaks (``s3://`` included).

Each concern has its module: ``uris`` (validate, redact, resolve, join), ``files`` (read, write, publish
create-if-absent, list), ``s3`` (the client, conditional and multipart writes, its errors), ``commit`` (markers,
leftovers of writers that died) and ``checks`` (before work starts). Callers use the names below.
"""

from distkd.storage.checks import check
from distkd.storage.commit import COMMIT_MARKER, Leftover, commit, discard, is_committed, leftovers
from distkd.storage.files import (
    encode_json,
    exists,
    list_files,
    list_folders,
    publish,
    read_bytes,
    read_json,
    remove,
    temporary_name,
    write_bytes,
    write_json,
)
from distkd.storage.uris import (
    StorageError,
    URIError,
    absolute,
    bucket_key,
    is_remote,
    is_s3,
    join,
    redact,
    resolve,
    validate,
    validate_named,
)

__all__ = [
    "COMMIT_MARKER",
    "Leftover",
    "StorageError",
    "URIError",
    "absolute",
    "bucket_key",
    "check",
    "commit",
    "discard",
    "encode_json",
    "exists",
    "is_committed",
    "is_remote",
    "is_s3",
    "join",
    "leftovers",
    "list_files",
    "list_folders",
    "publish",
    "read_bytes",
    "read_json",
    "redact",
    "remove",
    "resolve",
    "temporary_name",
    "validate",
    "validate_named",
    "write_bytes",
    "write_json",
]
