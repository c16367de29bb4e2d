"""The store on a local folder and on a real S3-compatible server behaves the same."""

from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError

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


def test_publish_writes_once_and_never_replaces(root):
    uri = storage.join(root, "entry", "part.bin")
    assert storage.publish(uri, b"first") is True
    assert storage.publish(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"
    assert storage.commit(storage.join(root, "entry")) is True
    assert storage.commit(storage.join(root, "entry")) is False
    assert storage.list_files(storage.join(root, "entry")) == [uri]
    assert storage.leftovers(root) == []  # no temporary file or upload stays behind


def test_large_object_is_published_as_one_multipart_upload(s3_server, monkeypatch):
    monkeypatch.setattr(storage.s3, "PART_BYTES", 5 << 20)  # S3's smallest part
    uri = f"s3://{BUCKET}/multipart/big.bin"
    data = bytes(range(256)) * ((6 << 20) // 256)
    assert storage.publish(uri, data) is True
    assert storage.publish(uri, data[::-1]) is False
    assert storage.read_bytes(uri) == data
    assert s3_server.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []  # the loser's aborted


def test_leftovers_of_interrupted_writes_are_listed_and_discarded(root):
    folder = storage.join(root, "softlabels", "key", "shards")
    storage.write_bytes(storage.join(folder, "part-00000-of-00001.parquet"), b"kept")
    temporary = storage.join(folder, storage.temporary_name("part-00000-of-00001.parquet"))
    storage.write_bytes(temporary, b"half")
    expected = {(temporary, "temporary file")}
    if storage.is_s3(root):
        bucket, key = storage.bucket_key(storage.join(folder, "part-00001-of-00002.parquet"))
        storage.s3.s3_client().create_multipart_upload(Bucket=bucket, Key=key)
        expected.add((f"s3://{bucket}/{key}", "multipart upload"))
    found = storage.leftovers(root)
    assert {(f.uri, f.kind) for f in found} == expected and all(f.age_seconds < 600 for f in found)
    for leftover in found:
        storage.discard(leftover)
    assert storage.leftovers(root) == []
    assert storage.list_files(folder) == [storage.join(folder, "part-00000-of-00001.parquet")]


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("s3:/bucket/store", "malformed URI: expected 's3://'"),
        ("s3:bucket/store", "malformed URI"),
        ("s3:///store", "no bucket or host"),
        ("s4://bucket/store", "unknown scheme 's4://'"),
        ("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/store", "credentials in a URI are refused"),
        ("s3://bucket/store?access_key=AKIDEXAMPLE&secret_key=wJalrXUtnFEMI", "credentials in a URI are refused"),
    ],
)
def test_malformed_uris_and_uris_with_credentials_are_refused(uri, problem):
    with pytest.raises(storage.URIError, match=problem) as error:
        storage.validate(uri)
    assert "wJalrXUtnFEMI" not in str(error.value)


@pytest.mark.parametrize("uri", ["store", "./a/b", "/abs/path", "file:///abs/path", "s3://bucket", "s3://b/k/x.pt"])
def test_local_paths_and_well_formed_uris_pass(uri):
    assert storage.validate(uri) == uri


class FakeS3:
    """An S3 client over a dict, for the create-if-absent probe: ``honoured`` names the writes (PutObject,
    CompleteMultipartUpload) that refuse, with 412, to replace a key under ``If-None-Match: *``."""

    def __init__(self, honoured: set[str]):
        self.honoured = honoured
        self.objects = {"store/kept.bin": b"kept"}
        self.writes: list[str] = []
        self.deleted: list[str] = []
        self.meta = SimpleNamespace(endpoint_url="http://fake-s3:9000")
        self.parts: dict[str, bytes] = {}

    def list_objects_v2(self, Bucket, Prefix, MaxKeys):
        return {"KeyCount": sum(key.startswith(Prefix) for key in self.objects)}

    def _write(self, operation: str, key: str, body: bytes, IfNoneMatch: str | None = None) -> None:
        self.writes.append(operation)
        if IfNoneMatch == "*" and operation in self.honoured and key in self.objects:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, operation)
        self.objects[key] = body

    def put_object(self, Bucket, Key, Body, **condition):
        self._write("PutObject", Key, Body, **condition)

    def create_multipart_upload(self, Bucket, Key):
        return {"UploadId": Key}

    def upload_part(self, Bucket, Key, UploadId, PartNumber, Body):
        self.parts[UploadId] = Body
        return {"ETag": "etag"}

    def complete_multipart_upload(self, Bucket, Key, UploadId, MultipartUpload, **condition):
        self._write("CompleteMultipartUpload", Key, self.parts.pop(UploadId), **condition)

    def abort_multipart_upload(self, Bucket, Key, UploadId):
        self.parts.pop(UploadId)

    def delete_object(self, Bucket, Key):
        self.deleted.append(Key)
        del self.objects[Key]


@pytest.fixture
def fake_s3(monkeypatch):
    """Install a ``FakeS3`` (honouring both writes unless told otherwise) as the store's client, probe unmade."""

    def install(honoured: set[str]) -> FakeS3:
        client = FakeS3(honoured)
        monkeypatch.setattr(storage.s3, "s3_client", lambda probe=False: client)
        return client

    monkeypatch.setattr(storage.checks, "_CREATE_IF_ABSENT", {})
    return install


@pytest.mark.parametrize("honoured", [set(), {"CompleteMultipartUpload"}, {"PutObject"}])
def test_a_store_on_an_s3_server_that_ignores_if_none_match_is_refused(fake_s3, honoured):
    client = fake_s3(honoured)
    with pytest.raises(storage.StorageError) as error:
        storage.check("s3://bucket/store", must_exist=False, publishes=True)
    assert str(error.value).startswith("s3://bucket/store: the S3 server at http://fake-s3:9000 ignores If-None-Match")
    assert "create-if-absent is not guaranteed there" in str(error.value)
    assert client.objects == {"store/kept.bin": b"kept"} and not client.parts  # only the probe went, and no upload
    [probe] = client.deleted
    assert probe.startswith("store/.create-if-absent-probe.tmp-")


def test_the_probe_runs_once_per_endpoint_and_bucket_and_only_for_a_store(fake_s3):
    client = fake_s3({"PutObject", "CompleteMultipartUpload"})
    storage.check("s3://bucket/data", must_exist=False)  # data and weights are only read: no probe
    assert client.writes == []
    storage.check("s3://bucket/store", must_exist=False, publishes=True)
    assert client.writes == ["PutObject", "PutObject", "CompleteMultipartUpload"]
    storage.check("s3://bucket/other-store", must_exist=False, publishes=True)
    assert len(client.writes) == 3 and len(client.deleted) == 1
    assert client.objects == {"store/kept.bin": b"kept"}
