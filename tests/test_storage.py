"""The store on a local folder and on a real S3-compatible server behaves the same."""

import boto3
import pytest

from distkd import storage
from tests.conftest import BUCKET


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_server")
    return f"s3://{BUCKET}/storage-test-{tmp_path.name}"


def test_round_trip_commit_and_remove(root):
    folder = storage.join(root, "entry")
    assert not storage.exists(folder) and not storage.is_committed(folder)
    storage.write_json(storage.join(folder, "b.json"), {"x": [1, 2]})
    storage.write_bytes(storage.join(folder, "a.bin"), b"\x00\x01")
    storage.write_bytes(storage.join(folder, "_hidden"), b"")
    assert storage.read_json(storage.join(folder, "b.json")) == {"x": [1, 2]}
    assert storage.read_bytes(storage.join(folder, "a.bin")) == b"\x00\x01"
    assert storage.list_files(folder) == [storage.join(folder, "a.bin"), storage.join(folder, "b.json")]
    assert storage.list_files(folder, ".json") == [storage.join(folder, "b.json")]
    assert not storage.is_committed(folder)
    storage.commit(folder)
    assert storage.is_committed(folder)
    storage.remove(folder)
    assert not storage.exists(folder) and storage.list_files(folder) == []


def test_s3_objects_are_real(s3_server):
    storage.write_bytes(f"s3://{BUCKET}/real/object.txt", b"hello")
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key="real/object.txt")["Body"].read()
    assert body == b"hello"
