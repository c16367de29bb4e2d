"""The soft-label cache: keys, formats, views, resume, exactly-once, verification."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distkd import config, labelstore, storage
from distkd.data.transforms import PAD
from distkd.distill.stage import rows_in_memory
from distkd.job import Job
from distkd.labels.formats import to_numpy
from distkd.labels.views import view_params
from distkd.methods.losses import Targets, objective
from distkd.models import load_weights
from distkd.softlabels import cache, inspect
from distkd.softlabels.stage import generate
from tests.label_store import one_entry
from tests.processes import command_line, descendants

ROWS = 400


def job_for(data: Path, store: Path, student: dict | None = None, **softlabels) -> Job:
    raw = {
        "name": "cache",
        "store": str(store),
        "data": {"uri": str(data), "limit": ROWS, "val_limit": 100},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"epochs": 1, "batch_size": 100}},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 100, "augment": False, **(student or {})}},
        "softlabels": {"batch_size": 50, "shard_rows": 100, **softlabels},
    }
    return Job.prepare(config.parse(raw, "<test>"))


@pytest.fixture(scope="module")
def data(tmp_path_factory, cifar10) -> Path:
    """A private copy of two shards' first rows, so a test may change the dataset's files."""
    folder = tmp_path_factory.mktemp("data")
    for name in ("train-00000-of-00005.parquet", "test-00000-of-00001.parquet"):
        pq.write_table(pq.read_table(cifar10 / name).slice(0, 1000), folder / name)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def weights(ray_cluster, data, store) -> str:
    """An untrained teacher: what the cache stores, resumes and checks does not depend on what it learned
    (training one is the pipeline tests' part)."""
    torch.manual_seed(0)
    path = store / "teacher.pt"
    torch.save(job_for(data, store).teacher.build().state_dict(), path)
    return str(path)


def shard_paths(entry: str) -> list[Path]:
    return [Path(labelstore.shard_uri(entry, s.file)) for s in labelstore.manifest(entry).shards]


def shards(entry: str) -> list[pq.Table]:
    return [pq.read_table(path) for path in shard_paths(entry)]


def test_key_changes_with_every_input_that_changes_the_outputs(data, store, weights, tmp_path):
    job = job_for(data, store)
    key = job.softlabel_spec(weights).uri
    assert job_for(data, store).softlabel_spec(weights).uri == key  # same inputs, same key
    assert (
        dataclasses.replace(job, config=job.config.model_copy(update={"name": "other"})).softlabel_spec(weights).uri
        == key
    )
    assert job_for(data, store, actors=2, batch_size=70).softlabel_spec(weights).uri == key  # pool size: not an input

    other_weights = tmp_path / "teacher.pt"
    state = torch.load(weights, weights_only=True)
    state["net.0.0.weight"] += 1e-3
    torch.save(state, other_weights)
    assert job.softlabel_spec(str(other_weights)).uri != key
    assert job_for(data, store, views=2).softlabel_spec(weights).uri != key
    assert job_for(data, store, dtype="float32").softlabel_spec(weights).uri != key
    assert job_for(data, store, format="topk", top_k=3).softlabel_spec(weights).uri != key
    normalize = dataclasses.replace(job.inputs.normalize, mean=(0.5, 0.5, 0.5))
    renormalised = dataclasses.replace(job, inputs=dataclasses.replace(job.inputs, normalize=normalize))
    assert renormalised.softlabel_spec(weights).uri != key

    changed = tmp_path / "data"
    shutil.copytree(data, changed)
    moved = job_for(changed, store).softlabel_spec(weights).uri
    assert moved == key  # the same bytes at another URI: named by content, not by path
    table = pq.read_table(changed / "train-00000-of-00005.parquet")
    pq.write_table(table.slice(1), changed / "train-00000-of-00005.parquet")
    assert job_for(changed, store).softlabel_spec(weights).uri != moved  # same URI, other files


def test_dense_entry_holds_teacher_logits_once_per_id(data, store, weights):
    job = job_for(data, store, dtype="float32")
    entry = generate(job.softlabel_spec(weights))
    tables = shards(entry)
    assert [len(t) for t in tables] == [100] * 4
    ids = [i for t in tables for i in t["id"].to_pylist()]
    expected = job.train.read_table(["id", "image"])
    assert ids == expected["id"].to_pylist()

    from distkd.data.source import decode

    images = torch.from_numpy(np.stack([decode(b) for b in expected["image"].to_pylist()[:8]]))
    teacher = load_weights(job.teacher.build(), weights).eval()
    with torch.inference_mode():
        direct = teacher(job.inputs.normalize(images)).numpy()
    np.testing.assert_allclose(to_numpy(tables[0]["logits"], np.float32)[:8], direct, rtol=1e-4, atol=1e-4)
    assert "Reusing".lower() in capture_reuse(job, weights)


def capture_reuse(job: Job, weights: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        generate(job.softlabel_spec(weights))
    return out.getvalue().lower()


def test_topk_with_all_classes_matches_dense(data, store, weights):
    dense_entry = generate(job_for(data, store).softlabel_spec(weights))
    dense = to_numpy(pa.concat_tables(shards(dense_entry))["logits"], np.float32)
    topk_entry = generate(job_for(data, store, format="topk", top_k=10).softlabel_spec(weights))
    table = pa.concat_tables(shards(topk_entry))
    index, logprob = to_numpy(table["topk_index"], np.int64), to_numpy(table["topk_logprob"], np.float32)
    rebuilt = np.zeros_like(logprob)
    np.put_along_axis(rebuilt, index, logprob, axis=1)
    expected = torch.log_softmax(torch.from_numpy(dense) / 4.0, dim=1).numpy()  # at distill.temperature
    np.testing.assert_allclose(rebuilt, expected, rtol=3e-3, atol=3e-3)  # both stored as float16

    generator = torch.Generator().manual_seed(0)
    student, labels = torch.randn(ROWS, 10, generator=generator), torch.randint(0, 10, (ROWS,), generator=generator)
    loss_dense = objective("hinton", student, Targets(logits=torch.from_numpy(dense)), labels, 0.9, 4.0)
    loss_topk = objective(
        "hinton", student, Targets(index=torch.from_numpy(index), logprob=torch.from_numpy(logprob)), labels, 0.9, 4.0
    )
    assert loss_topk.item() == pytest.approx(loss_dense.item(), rel=2e-3)


def test_topk_keeps_the_rest_of_the_mass():
    teacher = torch.tensor([[3.0, 1.0, 0.5, -1.0]])
    student, label = torch.tensor([[0.2, 2.0, -0.3, 0.1]]), torch.tensor([0])
    logp = torch.log_softmax(teacher / 2, dim=1)
    top = logp.topk(2, dim=1)
    p, q = logp.exp()[0], torch.softmax(student / 2, dim=1)[0]
    by_hand = sum(p[i] * (logp[0, i] - q[i].log()) for i in (0, 1))
    rest_p, rest_q = p[2:].sum(), q[2:].sum()
    by_hand += rest_p * (rest_p.log() - rest_q.log())
    assert objective(
        "hinton", student, Targets(index=top.indices, logprob=top.values), label, 1.0, 2.0
    ).item() == pytest.approx(4 * by_hand.item(), rel=1e-5)


def test_views_store_the_teachers_logits_on_the_views_pixels(data, store, weights):
    job = job_for(data, store, views=3, view_seed=7)
    entry = generate(job.softlabel_spec(weights))
    table = shards(entry)[0].slice(0, 6)
    params = to_numpy(table["views"], np.int64).reshape(6, 3, 3)
    ids = table["id"].to_pylist()
    np.testing.assert_array_equal(params, view_params(ids, 3, PAD, 7))
    assert {tuple(p) for p in params.reshape(-1, 3)} != {tuple(params[0, 0])}  # views differ
    assert params[..., 2].any() and not params[..., 2].all()  # some flipped, some not

    from distkd.data.source import decode

    images = np.stack([decode(b) for b in job.train.read_table(["image"])["image"].to_pylist()[:6]])
    padded = np.pad(images, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))  # zero padding, as the teacher's crops
    teacher = load_weights(job.teacher.build(), weights).eval()
    logits = to_numpy(table["logits"], np.float32).reshape(6, 3, 10)
    for v in range(3):
        crops = [padded[i, :, dy : dy + 32, dx : dx + 32] for i, (dy, dx, _) in enumerate(params[:, v])]
        view = np.stack([c[:, :, ::-1] if flip else c for c, flip in zip(crops, params[:, v, 2])])
        with torch.inference_mode():
            direct = teacher(job.inputs.normalize(torch.from_numpy(view.copy()))).numpy()
        np.testing.assert_allclose(logits[:, v], direct, rtol=2e-3, atol=2e-3)


def test_view_params_are_a_big_endian_hash_of_seed_id_and_view():
    import hashlib

    b = hashlib.blake2b(b"7:train/a:1", digest_size=5).digest()
    expected = [(b[0] * 256 + b[1]) % (2 * PAD + 1), (b[2] * 256 + b[3]) % (2 * PAD + 1), b[4] & 1]
    assert view_params(["train/a"], 2, PAD, 7)[0, 1].tolist() == expected


def test_resume_recomputes_only_missing_shards(data, store, weights):
    job = job_for(data, store, view_seed=1, views=1)
    entry = generate(job.softlabel_spec(weights))
    assert (labelstore.manifest(entry).computed_shards, labelstore.manifest(entry).teacher_rows) == (4, ROWS)
    paths = shard_paths(entry)
    kept = paths[0]
    before = kept.stat().st_mtime_ns
    for path in (Path(entry, "_COMMITTED"), Path(entry, "manifest.json"), paths[1], paths[3]):
        path.unlink()  # as if the job had died after two shards
    assert not storage.is_committed(entry)
    generate(job.softlabel_spec(weights))
    manifest = labelstore.manifest(entry)
    assert manifest.computed_shards == 2
    assert manifest.teacher_rows == 200  # the teacher ran on the 2 missing shards only
    assert kept.stat().st_mtime_ns == before
    assert manifest.rows == ROWS


def test_corrupted_or_truncated_shard_fails_verify_and_distill(data, store, weights, capsys):
    job = job_for(data, store, view_seed=2, views=1)
    entry = generate(job.softlabel_spec(weights))
    key = labelstore.manifest(entry).key
    assert "ok (400 rows in 4 shards" in inspect.verify(str(store), key)
    shard = shard_paths(entry)[2]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(labelstore.CacheError, match="checksum does not match"):
        inspect.verify(str(store), key)
    with pytest.raises(labelstore.CacheError, match=f"{shard.name}: checksum"):
        rows_in_memory(job.train, one_entry(entry), job.inputs)

    from distkd.cli import main

    assert main(["cache", "verify", key, "--store", str(store)]) == 1
    assert "checksum does not match" in capsys.readouterr().err
    assert main(["cache", "ls", "--store", str(store)]) == 0
    assert key in capsys.readouterr().out
    assert main(["cache", "rm", key, "--store", str(store)]) == 0
    assert not Path(entry).exists() and shard.exists()  # the entry goes; its shards are the store's, for gc


def test_killed_teacher_actor_still_gives_every_id_exactly_once(data, store, weights):
    job = job_for(data, store, view_seed=3, views=4, batch_size=20)
    spec = job.softlabel_spec(weights)
    entry, folder = spec.uri, storage.join(str(store), "softlabels", cache.SHARDS, spec.teacher_key)
    killed = []

    def kill_teacher_once_a_shard_is_written():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if storage.list_files(folder):
                for proc in descendants():
                    if "ShardWriter" in " ".join(command_line(proc)):
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_teacher_once_a_shard_is_written)
    killer.start()
    generate(job.softlabel_spec(weights))
    killer.join()
    assert killed, "the teacher actor finished before it could be killed"
    manifest = labelstore.manifest(entry)
    assert manifest.rows == ROWS
    ids = [i for t in shards(entry) for i in t["id"].to_pylist()]
    assert sorted(ids) == sorted(job.train.read_table(["id"])["id"].to_pylist()) and len(set(ids)) == ROWS


def test_two_jobs_writing_the_same_key_at_once_end_with_one_valid_entry(data, store, weights):
    job = job_for(data, store, view_seed=4, views=1)
    results, errors = [], []

    def write():
        try:
            results.append(generate(job.softlabel_spec(weights)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    writers = [threading.Thread(target=write) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    manifest = inspect.verify(str(store), labelstore.manifest(results[0]).key)
    assert "ok (400 rows in 4 shards" in manifest
    folder = shard_paths(results[0])[0].parent
    assert sorted(folder.iterdir()) == sorted(shard_paths(results[0]))  # one file a shard, no temporary files left


def test_distillation_moves_the_student_towards_its_teacher(data, store, weights):
    """On held-back rows, the distilled student is closer to its teacher (the KD term: KL at the distillation
    temperature) than the same student trained from the labels alone with the same seed (the baseline).
    Top-3 labels of 2 recorded views: the least information a student gets (dense labels are the pipeline's)."""
    from distkd.data.source import decode
    from distkd.distill.stage import students

    student = {"epochs": 3, "batch_size": 50, "lr": 0.02}
    job = job_for(data, store, student=student, view_seed=5, format="topk", top_k=3, views=2)
    labelled = job.softlabel_spec(weights)
    generate(labelled)
    runs = students(job.distilled_run(labelled), job.scratch_run())
    held_back = job.evaluated.read_table(["image", "label"]).slice(0, 200)
    images = torch.from_numpy(np.stack([decode(b) for b in held_back["image"].to_pylist()]))
    labels = torch.from_numpy(held_back["label"].to_numpy())
    T = job.config.distill.temperature

    def logits(spec, uri: str) -> torch.Tensor:
        with torch.inference_mode():
            return load_weights(spec.build(), uri).eval()(job.inputs.normalize(images))

    teacher = logits(job.teacher, weights)
    kd_term = {
        role: objective("hinton", logits(job.student, runs[role]), Targets(logits=teacher), labels, 1.0, T).item()
        for role in runs
    }
    assert kd_term["distilled"] < kd_term["scratch"], kd_term  # the rule: the KD term falls
