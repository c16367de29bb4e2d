"""The store on a real S3 server (SeaweedFS on 127.0.0.1): concurrent writers, torn shards, leftovers,
errors before work starts, and a whole pipeline on S3 that leaks no secret."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from distkd import cluster, config, labelstore, storage
from distkd.cli import main
from distkd.job import Job
from distkd.labels.formats import Format
from distkd.models import sources
from distkd.softlabels import cache
from distkd.softlabels.stage import generate
from distkd.specs import FORMAT_VERSION
from tests.conftest import BUCKET, ROOT
from tests.seaweedfs import free_ports


def objects(server, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` in BUCKET, by key."""
    client = server.client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


@pytest.fixture(scope="module")
def s3_cifar10(s3_server, cifar10) -> str:
    """The first rows of one train and the test shard, copied to S3 as a dataset of its own."""
    uri = f"s3://{BUCKET}/datasets/cifar10-slice"
    for source, name in [("train-00000-of-00005", "train-00000-of-00001"), ("test-00000-of-00001",) * 2]:
        sink = io.BytesIO()
        pq.write_table(pq.read_table(cifar10 / f"{source}.parquet").slice(0, 400), sink)
        storage.write_bytes(storage.join(uri, f"{name}.parquet"), sink.getvalue())
    return uri


def job_raw(store: str, data: str, name: str = "s3") -> dict:
    return {
        "name": name,
        "store": store,
        "data": {"uri": data, "limit": 200, "val_limit": 100},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"epochs": 1, "batch_size": 100}},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 100, "augment": False}},
        "softlabels": {"batch_size": 100, "shard_rows": 50},
        "evaluate": {"batch_size": 200},
    }


@pytest.fixture(scope="module")
def s3_weights(s3_server) -> str:
    """Untrained ResNet-9 weights on S3: the teacher's outputs need not be good to be cached."""
    torch.manual_seed(0)
    uri = f"s3://{BUCKET}/weights/resnet9-w4.pt"
    buffer = io.BytesIO()
    torch.save(sources.build("resnet9", 10, 3, 32, width=4).state_dict(), buffer)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def test_two_writer_processes_of_one_key_never_replace_each_others_shards(s3_server, cifar10, s3_weights, tmp_path):
    """Two `distkd`-like processes write every shard of one key at once, each with bytes of its own."""
    raw = job_raw(f"s3://{BUCKET}/writers", str(cifar10))
    raw["teacher"]["weights"] = s3_weights
    raw["softlabels"]["shard_rows"] = 25  # 8 shards
    path = write_job(tmp_path, raw)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.shard_writer", str(path), str(tag), str(barrier), "2"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in (1.0, 2.0)
    ]
    outputs = [w.communicate(timeout=600) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err[-2000:] for _, err in outputs]
    reports = [json.loads(out) for out, _ in outputs]
    entry = reports[0]["entry"]
    manifest = labelstore.manifest(entry)
    published = [dataclasses.asdict(s) for s in manifest.shards]
    assert [r["shards"] for r in reports] == [published] * 2  # the loser adopted the winner's shards
    assert len(published) == 8
    for shard in manifest.shards:
        data = storage.read_bytes(labelstore.shard_uri(entry, shard.file))
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.bytes
    assert cache.leftovers(raw["store"]) == []  # the entry and the shards it lists (<store>/softlabels/shards)


def test_torn_and_foreign_shards_are_computed_again_on_resume(ray_cluster, s3_server, cifar10, s3_weights, capsys):
    job = Job.prepare(config.parse(job_raw(f"s3://{BUCKET}/torn", str(cifar10)), "<torn>"))
    spec = job.softlabel_spec(s3_weights)
    entry = generate(spec)
    first = labelstore.manifest(entry)
    assert first.computed_shards == 4
    key = storage.bucket_key(entry)[1]
    client = s3_server.client()
    uris = [labelstore.shard_uri(entry, s.file) for s in first.shards]  # in unit order
    shard = [storage.bucket_key(uri)[1] for uri in uris]
    torn = objects(s3_server, shard[1])[shard[1]][:-50]  # as a writer that died mid-file would leave it
    foreign = objects(s3_server, shard[3])[shard[3]]  # a readable shard, with another shard's ids
    for name, body in [(shard[1], torn), (shard[2], foreign)]:
        client.put_object(Bucket=BUCKET, Key=name, Body=body)
    for name in (f"{key}/{storage.COMMIT_MARKER}", f"{key}/manifest.json"):
        client.delete_object(Bucket=BUCKET, Key=name)  # as if the job had died before committing
    capsys.readouterr()

    generate(spec)
    printed = capsys.readouterr().out
    assert f"{uris[1]}: unreadable" in printed
    assert f"{uris[2]}: its ids are not this shard's" in printed
    again = labelstore.manifest(entry)
    assert (again.computed_shards, again.teacher_rows) == (2, 100)
    assert [again.shards[i] for i in (0, 3)] == [first.shards[i] for i in (0, 3)]  # the sound ones kept
    cache.verify(entry, job.train.read_table(["id"])["id"].to_pylist())


def test_leftovers_are_listed_by_cache_ls_and_removed_by_cache_gc(s3_server, capsys):
    store = f"s3://{BUCKET}/gc"
    teacher, entry = "1" * 32, storage.join(store, "softlabels", "0" * 32)
    shards = storage.join(store, "softlabels", cache.SHARDS, teacher)
    file = f"../{cache.SHARDS}/{teacher}/{'2' * 32}.parquet"
    kept = labelstore.ShardRecord(file, 1, 4, hashlib.sha256(b"kept").hexdigest())
    storage.publish(labelstore.shard_uri(entry, kept.file), b"kept")
    commit_entry(entry, kept)  # a committed entry lists the kept shard: gc keeps it
    temporary = storage.join(shards, storage.temporary_name(f"{'3' * 32}.parquet"))
    storage.write_bytes(temporary, b"half a shard")
    key = storage.bucket_key(storage.join(shards, f"{'3' * 32}.parquet"))[1]
    s3_server.client().create_multipart_upload(Bucket=BUCKET, Key=key)

    assert main(["cache", "ls", "--store", store]) == 0
    listed = capsys.readouterr().out
    assert "temporary file" in listed and temporary in listed
    assert "multipart upload" in listed and f"s3://{BUCKET}/{key}" in listed
    assert main(["cache", "gc", "--store", store]) == 0  # younger than an hour: may be a running writer's
    assert "0 removed, 2 younger than 3600 s kept" in capsys.readouterr().out
    assert main(["cache", "gc", "--store", store, "--older-than", "0"]) == 0
    assert "2 removed" in capsys.readouterr().out
    assert cache.leftovers(store) == []
    assert s3_server.client().list_multipart_uploads(Bucket=BUCKET, Prefix="gc/").get("Uploads", []) == []
    assert storage.list_files(shards) == [labelstore.shard_uri(entry, kept.file)]


def commit_entry(entry: str, shard: labelstore.ShardRecord) -> None:
    """A committed entry whose manifest lists ``shard`` alone (made by hand: no teacher runs)."""
    manifest = labelstore.Manifest(
        key=entry.rsplit("/", 1)[1],
        format_version=FORMAT_VERSION,
        inputs={
            "teacher": {"name": "resnet9"},
            "data": {"uri": "s3://data", "split": "train"},
            "format": dataclasses.asdict(Format("dense", "float16")),
            "views": None,
        },
        shards=(shard,),
        rows=shard.rows,
        bytes=shard.bytes,
        computed_shards=1,
        teacher_rows=shard.rows,
        teacher_seconds=1.0,
        rows_per_second=float(shard.rows),
        distkd_version="test",
        created="2024-01-01T00:00:00Z",
    )
    assert storage.publish(storage.join(entry, labelstore.MANIFEST), storage.encode_json(manifest.to_json()))
    storage.commit(entry)


def test_s3_errors_on_the_cache_path_are_cache_errors_naming_the_uri(s3_server, monkeypatch):
    entry = f"s3://{BUCKET}/denied/softlabels/k"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(labelstore.CacheError, match=f"^{entry}: .*(ACCESS_DENIED|access denied|Forbidden)"):
        labelstore.manifest(entry)
    file = f"../{cache.SHARDS}/{'0' * 32}/{'1' * 32}.parquet"
    shard = labelstore.shard_uri(entry, file)
    assert shard == f"s3://{BUCKET}/denied/softlabels/{cache.SHARDS}/{'0' * 32}/{'1' * 32}.parquet"
    with pytest.raises(labelstore.CacheError, match=f"^{shard}: wrong secret key"):
        cache.write_shard(entry, file, pa.table({"id": ["a"], "logits": pa.array([[0.0, 1.0]])}), ["a"])


def write_job(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"store": "s3:/bucket/store"}, "key 'store': s3:/bucket/store: malformed URI"),
        ({"store": "s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/s"}, "key 'store': s3://***@bucket/s: credentials in a URI"),
        ({"weights": "s3://k:wJalrXUtnFEMI@bucket/t.pt"}, "key 'teacher.weights': s3://***@bucket/t.pt: credentials"),
        ({"data": "s3:/bucket/data"}, "key 'data.uri': s3:/bucket/data: malformed URI"),
        ({"endpoint": "unreachable"}, f"key 'store': s3://{BUCKET}/s: cannot reach the S3 endpoint http://127.0.0.1:"),
        ({"store": "s3://no-such-bucket-here/s"}, "key 'store': s3://no-such-bucket-here/s: the bucket does not exist"),
        ({"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}, f"key 'store': s3://{BUCKET}/s: wrong secret key"),
        ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, f"key 'store': s3://{BUCKET}/s: the access key is not known"),
        ({"weights": f"s3://{BUCKET}/nowhere/t.pt"}, f"key 'teacher.weights': s3://{BUCKET}/nowhere/t.pt: not found"),
        ({"data": f"s3://{BUCKET}/nowhere"}, f"key 'data.uri': s3://{BUCKET}/nowhere: no Parquet shards"),
    ],
)
def test_unusable_uris_stop_the_job_before_ray_starts(
    s3_server, cifar10, tmp_path, monkeypatch, capsys, setting, expected
):
    def no_cluster_work(*args, **kwargs):
        raise AssertionError("Ray was asked to start before the store was checked")

    monkeypatch.setattr(cluster, "connect", no_cluster_work)
    raw = job_raw(setting.get("store", f"s3://{BUCKET}/s"), setting.get("data", str(cifar10)))
    raw["teacher"]["weights"] = setting.get("weights")
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        if name in setting:
            monkeypatch.setenv(name, setting[name])
    if setting.get("endpoint") == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")
    path = write_job(tmp_path, raw)
    started = time.perf_counter()
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err
    assert "wJalrXUtnFEMI" not in err
    assert time.perf_counter() - started < 30


def test_seaweedfs_honours_if_none_match_and_the_probe_leaves_the_store_as_it_was(s3_server, monkeypatch):
    monkeypatch.setattr(storage.checks, "_CREATE_IF_ABSENT", {})
    store = f"s3://{BUCKET}/probed"
    storage.write_bytes(storage.join(store, "kept.bin"), b"kept")
    storage.check(store, must_exist=False, publishes=True)
    assert storage.checks._CREATE_IF_ABSENT == {(s3_server.endpoint, BUCKET): True}
    assert objects(s3_server, "probed/") == {"probed/kept.bin": b"kept"}
    assert storage.leftovers(store) == []  # no probe object, no multipart upload left behind


def test_a_store_without_create_if_absent_stops_the_job_before_ray_starts(
    s3_server, cifar10, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(storage.checks, "_CREATE_IF_ABSENT", {})
    monkeypatch.setattr(storage.checks, "_refuses_second_publish", lambda client, bucket, key: False)
    monkeypatch.setattr(cluster, "connect", lambda *args, **kwargs: pytest.fail("Ray was asked to start"))
    path = write_job(tmp_path, job_raw(f"s3://{BUCKET}/s", str(cifar10)))
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"key 'store': s3://{BUCKET}/s: the S3 server at {s3_server.endpoint} ignores If-None-Match" in err
    assert "create-if-absent is not guaranteed there" in err and "Traceback" not in err


def test_whole_pipeline_on_s3_writes_no_secret_anywhere(s3_server, s3_cifar10, s3_weights, tmp_path):
    """Data, teacher weights, store, soft labels, a run (its Ray Train checkpoints) and the report on S3, run
    as `distkd pipeline` in its own process with its own local Ray; the secret key is in that process's
    environment (the node's own credentials) and nowhere else."""
    store = f"s3://{BUCKET}/pipeline-on-s3"
    raw = job_raw(store, s3_cifar10, name="on-s3")
    raw["teacher"]["weights"] = s3_weights
    raw["distill"] = {"baseline": False}  # one student is enough here
    path = write_job(tmp_path, raw)
    ray_root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=str(ray_root))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "distkd", "pipeline", str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        logs = {p: p.read_bytes() for p in ray_root.rglob("*") if p.is_file()}
    finally:
        shutil.rmtree(ray_root, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = next(line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("report: "))
    assert report.startswith(f"{store}/reports/") and storage.is_committed(report.rsplit("/", 1)[0])
    written = objects(s3_server, "pipeline-on-s3/")
    committed = sorted(
        k.split("/")[1] + "/" + k.split("/")[2].split("-")[0] for k in written if k.endswith("/_COMMITTED")
    )
    assert committed == [
        "reports/" + report.split("/")[-2],
        "runs/student",
        "softlabels/" + next(k.split("/")[2] for k in written if k.startswith("pipeline-on-s3/softlabels/")),
    ]

    secret = s3_server.secret_key.encode()
    assert secret not in (done.stdout + done.stderr).encode()
    assert any(k.endswith("metrics.json") for k in written) and not [k for k, v in written.items() if secret in v]
    assert any("runtime_env" in p.name for p in logs), "Ray's session logs were not where the test looks"
    assert any(s3_server.endpoint.encode() in data for data in logs.values())  # what is forwarded shows there
    assert not [p for p, data in logs.items() if secret in data]
