"""Every bad job input distkd refuses, one row each: the change to a small valid job, and a phrase of the message.

Each row runs ``distkd plan`` on the job and expects exit code 2, the phrase, no traceback, no secret of a URI in
anything printed, and Ray not initialised: bad input is refused before any cluster work (issues 16 and 34).
The jobs read a few rows of the shared CIFAR-10 and review shards, copied into the test's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from distkd.cli import main
from tests.conftest import CIFAR10, REVIEWS, RayWatch

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY"  # in every URI with credentials: never printed
CREDENTIALS = f"AKIAIOSFODNN7EXAMPLE:{SECRET}@"
TRAIN, TEST = 8, 120  # rows of each split: the test split has more values than a slice column may


def first_rows(source: Path, split: str, rows: int) -> pa.Table:
    return pq.read_table(sorted(source.glob(f"{split}-*.parquet"))[0]).slice(0, rows)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """CIFAR-10's first rows (10 classes, set in the job: 8 training rows need not hold each), with columns to slice
    by: a category, a float, a list, one of a value per row and a dictionary-encoded category."""
    folder = tmp_path_factory.mktemp("images")
    for split, rows in (("train", TRAIN), ("test", TEST)):
        table = first_rows(CIFAR10, split, rows)
        table = table.append_column("group", pa.array([f"g{i % 3}" for i in range(rows)]))
        table = table.append_column("score", pa.array([i / 7 for i in range(rows)]))
        table = table.append_column("tags", pa.array([[i % 2] for i in range(rows)]))
        table = table.append_column("serial", pa.array([f"s{i}" for i in range(rows)]))
        table = table.append_column("grade", pa.array([f"g{i % 2}" for i in range(rows)]).dictionary_encode())
        pq.write_table(table, folder / f"{split}-0.parquet")
    return folder


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("texts")
    for split, rows in (("train", TRAIN), ("test", 4)):
        pq.write_table(first_rows(REVIEWS, split, rows).select(["id", "text", "label"]), folder / f"{split}-0.parquet")
    return folder


def image_job(data: Path, store: Path) -> dict:
    return {
        "name": "refusals",
        "store": str(store),
        "data": {"uri": str(data), "num_classes": 10, "val_limit": 4},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"batch_size": 4}},
        "student": {"name": "lenet5", "train": {"batch_size": 4, "augment": False}},
    }


def text_job(data: Path, store: Path) -> dict:
    train = {"batch_size": 4, "augment": False}
    return {
        "name": "refusals",
        "store": str(store),
        "data": {"uri": str(data), "num_classes": 5, "tokenizer": {"vocab_size": 300, "max_length": 16}},
        "teacher": {"name": "text_cnn", "kwargs": {"dim": 8, "filters": 8}, "train": train},
        "student": {"name": "text_cnn", "kwargs": {"dim": 4, "filters": 4}, "train": train},
    }


# --- what some rows make in the test's folder before the job is written (each returns the job's changes)


def program_folder(source: str) -> Callable[[Path], dict]:
    def make(tmp_path: Path) -> dict:
        (tmp_path / "program").mkdir()
        return {"teacher.name": f"{source}:{tmp_path / 'program'}"}

    return make


def garbage_file(source: str) -> Callable[[Path], dict]:
    def make(tmp_path: Path) -> dict:
        (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 not a program")
        return {"teacher.name": f"{source}:{tmp_path / 'model.pt'}"}

    return make


def hf_folder(config: str) -> Callable[[Path], dict]:
    def make(tmp_path: Path) -> dict:
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "config.json").write_text(config)
        return {"teacher.name": f"hf:{tmp_path / 'hf'}"}

    return make


def hf_bert(tmp_path: Path) -> dict:
    from tests.hf_text import tiny_bert

    return {"teacher.name": f"hf:{tiny_bert(tmp_path / 'bert')}", "teacher.weights": "own"}  # no classifier head


def hf_bert_broken_tokenizer(tmp_path: Path) -> dict:
    from tests.hf_text import tiny_bert

    (tiny_bert(tmp_path / "bert") / "tokenizer.json").write_text("{not json")
    return {"teacher.name": f"hf:{tmp_path / 'bert'}"}


def exiting_module(code: int) -> Callable[[Path], dict]:
    def make(tmp_path: Path) -> dict:
        (tmp_path / "exits.py").write_text(f"import sys\nsys.exit({code})\n")
        return {"code": [str(tmp_path / "exits.py")], "teacher.name": "import:exits:Net"}

    return make


def garbage_weights(tmp_path: Path) -> dict:
    (tmp_path / "teacher.pt").write_bytes(b"garbage")
    return {"teacher.weights": str(tmp_path / "teacher.pt")}


def other_weights(tmp_path: Path) -> dict:
    from distkd.models import sources

    torch.save(sources.build("lenet5", 10, 3, 32).state_dict(), tmp_path / "teacher.pt")
    return {"teacher.weights": str(tmp_path / "teacher.pt")}


def a_file(tmp_path: Path) -> dict:
    (tmp_path / "a-file").write_text("not a folder")
    return {"store": str(tmp_path / "a-file")}


def changed_split(data: str, split: str, **columns: pa.Array) -> Callable[[Path], dict]:
    """A copy of the job's data whose ``split`` has ids ``<split>/<i>`` and ``columns`` replaced."""

    def make(tmp_path: Path) -> dict:
        source, copy = Path(DATA[data]), tmp_path / "data"
        copy.mkdir()
        for file in source.glob("*.parquet"):
            table = pq.read_table(file)
            if file.name.startswith(split):
                ids = pa.array([f"{split}/{i}" for i in range(table.num_rows)])
                for name, values in {"id": ids, **columns}.items():
                    table = table.set_column(table.schema.get_field_index(name), name, values)
            pq.write_table(table, copy / file.name)
        return {"data.uri": str(copy)}

    return make


def train_rows(values: list, kind: pa.DataType) -> pa.Array:
    return pa.array(values, kind)


INVALID_UTF8 = pa.array([b"fine", b"also fine", b"bad \xff\xfe bytes"] + [b"more"] * (TRAIN - 3)).view(pa.string())
DATA: dict[str, str] = {}  # 'image' and 'text': the module's data folders (set by the fixture below)


@dataclass(frozen=True)
class Refusal:
    """One bad input: the changes to the valid job (dotted keys; a callable makes files first and returns them)."""

    id: str
    changes: dict | Callable[[Path], dict]
    expected: str  # a phrase of the message; {tmp} stands for the test's folder, {images} for the image data's
    data: str = "image"  # or "text": the job it changes
    extra: dict = field(default_factory=dict)  # more changes, beside a callable's


REFUSALS = [
    # Issue 34: credentials in any URI, refused in one place (storage.validate) and never printed.
    Refusal(
        "store-credentials",
        {"store": f"s3://{CREDENTIALS}bucket/store"},
        "key 'store': s3://***@bucket/store: credentials in a URI are refused",
    ),
    Refusal("data-credentials", {"data.uri": f"s3://{CREDENTIALS}bucket/data"}, "key 'data.uri': s3://***@bucket"),
    Refusal(
        "weights-credentials",
        {"teacher.weights": f"s3://{CREDENTIALS}bucket/t.pt"},
        "key 'teacher.weights': s3://***@bucket/t.pt: credentials in a URI are refused",
    ),
    Refusal(
        "hf-credentials",
        {"teacher.name": f"hf:s3://{CREDENTIALS}bucket/m"},
        "key 'teacher.name': s3://***@bucket/m: credentials in a URI are refused",
    ),
    Refusal(
        "torchscript-credentials",
        {"teacher.name": f"torchscript:s3://{CREDENTIALS}b/m.pt"},
        "key 'teacher.name': s3://***@b/m.pt: credentials",
    ),
    Refusal(
        "export-credentials",
        {"student.name": f"export:s3://{CREDENTIALS}b/m.pt2"},
        "key 'student.name': s3://***@b/m.pt2: credentials",
    ),
    Refusal("query-credentials", {"data.uri": f"s3://bucket/data?secret_key={SECRET}"}, "secret_key=***"),
    Refusal(
        "tokenizer-credentials",
        {"data.tokenizer.name": f"hf:s3://{CREDENTIALS}bucket/tok"},
        "key 'data.tokenizer.name': s3://***@bucket/tok: credentials in a URI are refused",
        "text",
    ),
    # Issue 34: numbers that size memory, bounded and named by their own key.
    Refusal(
        "bpe-below-alphabet",
        {"data.tokenizer.name": "bpe", "data.tokenizer.vocab_size": 50},
        "key 'data.tokenizer.vocab_size': a bpe tokenizer trained on split 'train' holds at least 258 tokens",
        "text",
    ),
    Refusal(
        "wordpiece-below-alphabet",
        {"data.tokenizer.vocab_size": 50},
        "key 'data.tokenizer.vocab_size': a wordpiece tokenizer trained on split 'train' holds at least",
        "text",
    ),
    Refusal(
        "huge-max-length",
        {"data.tokenizer.max_length": 1_000_000_000},
        "key 'data.tokenizer.max_length': Input should be less than or equal to 8192",
        "text",
    ),
    Refusal(
        "huge-vocab",
        {"data.tokenizer.vocab_size": 10**10},
        "key 'data.tokenizer.vocab_size': Input should be less than or equal to 1000000",
        "text",
    ),
    Refusal(
        "huge-num-classes",
        {"data.num_classes": 10**9},
        "key 'data.num_classes': Input should be less than or equal to 100000",
    ),
    Refusal(
        "huge-label",
        changed_split("image", "train", label=train_rows([0, 1, 2, 2**40, 4, 5, 6, 7], pa.int64())),
        "train-0.parquet: row id 'train/3': label 1099511627776 would make 1099511627777 classes",
        extra={"data.num_classes": None},
    ),
    # Issue 34: ensembles.
    Refusal(
        "infinite-weight",
        {"teacher": [{"name": "lenet5", "weight": float("inf")}, {"name": "lenet5"}]},
        "key 'teacher.0.weight': Input should be a finite number",
    ),
    Refusal(
        "weights-sum-infinite",
        {"teacher": [{"name": "lenet5", "weight": 1e308}, {"name": "resnet9", "weight": 1e308}]},
        "key 'teacher': the teachers' weights sum to inf",
    ),
    Refusal(
        "same-teacher-twice",
        {"teacher": [{"name": "lenet5", "weight": 1.0}, {"name": "lenet5", "weight": 2.0}]},
        "'teacher.0' and 'teacher.1' are the same teacher",
    ),
    # Issue 34: model files that do not load, named by 'teacher.name'.
    Refusal(
        "torchscript-folder",
        program_folder("torchscript"),
        "key 'teacher.name': {tmp}/program: a folder, expected a program file",
    ),
    Refusal("export-folder", program_folder("export"), "key 'teacher.name': {tmp}/program: a folder"),
    Refusal(
        "garbage-torchscript", garbage_file("torchscript"), "key 'teacher.name': {tmp}/model.pt: not a TorchScript file"
    ),
    Refusal("garbage-export", garbage_file("export"), "key 'teacher.name': {tmp}/model.pt: not a torch.export archive"),
    Refusal("garbage-hf", hf_folder("{not json"), "key 'teacher.name': {tmp}/hf/config.json: not JSON"),
    Refusal(
        "unknown-hf-model",
        hf_folder('{"model_type": "nonsense"}'),
        "key 'teacher.name': {tmp}/hf: not a save_pretrained model folder that loads",
    ),
    Refusal(
        "import-exits-0",
        exiting_module(0),
        "key 'teacher.name': 'import:exits:Net': importing 'exits' called sys.exit(0)",
    ),
    Refusal("import-exits-3", exiting_module(3), "importing 'exits' called sys.exit(3)"),
    # Issue 33: Hugging Face text models.
    Refusal(
        "offline-hub-id",
        {"teacher.name": "hf:distkd-test/no-such-bert@main"},
        "key 'teacher.name': 'distkd-test/no-such-bert@main' is no folder here, and as a Hugging Face Hub id it "
        "could not be downloaded",
        "text",
    ),
    Refusal(
        "no-such-package",
        {"teacher.name": "hf:package:distkd_no_such_package/model"},
        "key 'teacher.name': 'package:distkd_no_such_package/model': no installed package 'distkd_no_such_package'",
        "text",
    ),
    Refusal("max-length-of-images", {"student.max_length": 16}, "key 'student.max_length': 'max_length' cuts a text"),
    Refusal(
        "hf-tokenizer-that-does-not-load",
        hf_bert_broken_tokenizer,
        "key 'teacher.name': {tmp}/bert: no tokenizer that loads",
        "text",
    ),
    Refusal(
        "own-weights-of-a-builtin",
        {"teacher.weights": "own"},
        "key 'teacher.weights': 'own' names the weights in an hf: folder; 'text_cnn' has none",
        "text",
    ),
    Refusal(
        "own-weights-without-a-classifier",
        hf_bert,
        "key 'teacher.weights': {tmp}/bert: 'own' needs a folder that holds a classifier of the data's 5 classes",
        "text",
    ),
    # Issue 34: data.
    Refusal(
        "invalid-utf8",
        changed_split("text", "train", text=INVALID_UTF8),
        "train-0.parquet: row id 'train/2': the text in column 'text' is not valid UTF-8",
        "text",
    ),
    Refusal("slice-float", {"evaluate.slices": ["score"]}, "key 'evaluate.slices': column 'score' of "),
    Refusal("slice-list", {"evaluate.slices": ["tags"]}, "column 'tags' of "),
    Refusal(
        "slice-many-values",
        {"evaluate.slices": ["serial"]},
        "key 'evaluate.slices': column 'serial' of split "
        "'test' has 120 values, more than the 100 slices allowed per column",
    ),
    Refusal(
        "removed-temperature",
        {"softlabels.temperature": 2.0},
        "key 'softlabels.temperature': removed: top-k labels are stored at 'distill.temperature'",
    ),
    # Last rounds' (issue 16 and before): keys and types.
    Refusal("unknown-key", {"epochs": 3}, "unknown key 'epochs'"),
    Refusal("wrong-type", {"teacher.train.epochs": "ten"}, "key 'teacher.train.epochs'"),
    Refusal("negative-lr", {"teacher.train.lr": -1.0}, "key 'teacher.train.lr'"),
    Refusal("unknown-stage", {"stages": ["distil"]}, "key 'stages.0'"),
    Refusal("no-stages", {"stages": []}, "key 'stages': List should have at least 1 item"),
    Refusal("zero-std", {"data.std": [0.25, 0.0, 0.25]}, "key 'data.std': needs positive numbers"),
    Refusal("nan-mean", {"data.mean": [0.5, float("nan"), 0.5]}, "key 'data.mean': needs finite numbers"),
    Refusal("two-channels", {"data.channels": 2}, "key 'data.channels'"),
    Refusal("store-gs", {"store": "gs://bucket/store"}, "key 'store': gs:// cannot hold a store"),
    Refusal("store-a-file", a_file, "a-file is a file; expected a folder"),
    Refusal("ensemble-of-one", {"teacher": [{"name": "lenet5"}]}, "an ensemble is a list of at least 2 teachers"),
    # Registry entries and the rules that need a registry, checked before work (checks.settings).
    Refusal(
        "momentum",
        {"teacher.train.optimizer": {"kwargs": {"momentum": 1.0}}},
        "key 'teacher.train.optimizer': sgd refuses {'momentum': 1.0}: momentum must be in [0, 1), got 1.0",
    ),
    Refusal(
        "unknown-optimizer",
        {"student.train.optimizer": {"name": "adam"}},
        "key 'student.train.optimizer': unknown optimizer 'adam'; known: adamw, sgd",
    ),
    Refusal(
        "schedule-argument",
        {"teacher.train.schedule": {"name": "cosine", "kwargs": {"gamma": 2}}},
        "key 'teacher.train.schedule': unknown argument(s) gamma; cosine takes warmup, floor",
    ),
    Refusal(
        "loss-argument",
        {"distill.loss": {"name": "dkd", "kwargs": {"beta": 8}}},
        "key 'distill.loss': unknown argument(s) beta; dkd takes target_weight",
    ),
    Refusal(
        "topk-loss",
        {"softlabels.format": "topk", "distill.loss": {"name": "dkd"}},
        "key 'distill.loss': the 'dkd' loss needs the teacher's logits on every class",
    ),
    Refusal(
        "unknown-tokenizer",
        {"data.tokenizer.name": "sentencepiece"},
        "key 'data.tokenizer.name': unknown tokenizer 'sentencepiece'; known: bpe, wordpiece, or hf:<folder>",
        "text",
    ),
    Refusal("topk-dense", {"softlabels.top_k": 3}, "key 'softlabels.top_k': only used with 'softlabels.format: topk'"),
    Refusal(
        "views-without-kd",
        {"distill.alpha": 0.0, "softlabels.views": 2},
        "key 'softlabels.views': views are soft labels for",
    ),
    Refusal(
        "augment-without-views",
        {"student.train.augment": True},
        "key 'student.train.augment': the distilled student would train",
    ),
    # ... and against the data and the models.
    Refusal("unknown-model", {"student.name": "lenet6"}, "key 'student.name': unknown model 'lenet6'"),
    Refusal(
        "no-data",
        {"data.uri": "/nonexistent/cifar"},
        "key 'data.uri': /nonexistent/cifar: no Parquet shards for split 'train'",
    ),
    Refusal("no-split", {"data.train_split": "training"}, "no Parquet shards for split 'training'"),
    Refusal(
        "missing-weights",
        {"teacher.weights": "/nonexistent/teacher.pt"},
        "key 'teacher.weights': /nonexistent/teacher.pt: not found",
    ),
    Refusal("garbage-weights", garbage_weights, "not a PyTorch state_dict file (UnpicklingError"),
    Refusal("other-weights", other_weights, "holds weights of another architecture or size: missing"),
    Refusal(
        "unbuildable",
        {"teacher.kwargs": {"width": -1}},
        "key 'teacher.kwargs': cannot build 'resnet9' with {'width': -1}",
    ),
    Refusal("unknown-kwarg", {"teacher.kwargs": {"depth": 3}}, "key 'teacher.kwargs': cannot build 'resnet9'"),
    Refusal(
        "fails-forward",
        {"teacher.kwargs": {"width": 0}},
        "keys 'teacher.name', 'teacher.kwargs': the model fails on a batch of the data's shape [3, 32, 32]",
    ),
    Refusal("class-names", {"data.class_names": ["a", "b"]}, "key 'data.class_names': 2 names for 10 classes"),
    Refusal(
        "top-k-above-classes",
        {"softlabels.format": "topk", "softlabels.top_k": 20},
        "key 'softlabels.top_k': 20 is more than the 10",
    ),
    Refusal(
        "batch-above-rows",
        {"student.train.batch_size": 9},
        "key 'student.train.batch_size': 8 training rows "
        "over 1 worker(s) ('resources.num_workers') give 8 per worker, fewer than the batch size 9",
    ),
    Refusal("label-above-classes", {"data.num_classes": 5}, "label 5 is outside [0, 5)"),
    Refusal(
        "mean-per-channel", {"data.mean": [0.5], "data.std": [0.25]}, "keys 'data.mean' and 'data.std' need 3 values"
    ),
    Refusal(
        "string-labels",
        changed_split("image", "train", label=train_rows(list("abcdefgh"), pa.string())),
        "train-0.parquet: column 'label' holds string values; expected integer class indices",
    ),
    Refusal(
        "duplicate-ids",
        changed_split("image", "train", id=train_rows(list("abcdbefa"), pa.string())),
        "train-0.parquet row 4: id 'b' is also the id of ",
    ),
    Refusal(
        "null-id",
        changed_split("image", "train", id=train_rows(list("abc") + [None] + list("defg"), pa.string())),
        "train-0.parquet row 3: no id",
    ),
    Refusal(
        "labels-from-one",
        changed_split("image", "train", label=train_rows(list(range(1, 9)), pa.int64())),
        "class(es) 0 never occur",
        extra={"data.num_classes": None},
    ),
    # Issue 33 item 3: rows without labels train the distilled student alone, and are never evaluated.
    Refusal(
        "unlabelled-split",
        changed_split("image", "train", label=train_rows([None] * TRAIN, pa.int64())),
        "key 'data.train_split': split 'train' of {tmp}/data has no labelled row (its label column 'label' is all "
        "null), but 'teacher', 'student' (its baseline or alpha 0) train on labelled rows alone",
    ),
    Refusal(
        "no-labelled-rows",
        {"data.labelled_rows": 0, "distill.baseline": False},
        "has no labelled row ('data.labelled_rows' is 0), but 'teacher' trains on labelled rows alone; label some rows "
        "(or raise 'data.labelled_rows')",
    ),
    Refusal(
        "unlabelled-scratch-student",
        {"data.labelled_rows": 0, "stages": ["distill"]},
        "has no labelled row ('data.labelled_rows' is 0), but 'student' (its baseline or alpha 0) trains on",
    ),
    Refusal(
        "unlabelled-test-row",
        changed_split("image", "test", label=pa.array([i % 10 if i != 3 else None for i in range(TEST)], pa.int64())),
        "test-0.parquet: row id 'test/3': no label (1 row(s) of split 'test', named by 'data.test_split', have none); "
        "an evaluated split needs a label in every row",
    ),
    Refusal(
        "unlabelled-rows-class-count",
        {"data.labelled_rows": 0, "stages": ["softlabels"]},
        "has no labelled row ('data.labelled_rows' is 0), but the class count ('data.num_classes' not set) comes "
        "from its labels",
        extra={"data.num_classes": None},
    ),
    Refusal(
        "dkd-without-labels",
        {"data.labelled_rows": 6, "distill.loss.name": "dkd"},
        "key 'distill.loss': the 'dkd' loss reads each row's label, but {images}/train-0.parquet: row id "
        "'train/frog/0000' has none (2 row(s) of split 'train' without one); use the 'hinton' or 'dist' loss",
    ),
    Refusal(
        "labelled-rows-below-batch",
        {"data.labelled_rows": 3},
        "key 'teacher.train.batch_size': 3 labelled training rows over 1 worker(s) ('resources.num_workers') give 3",
    ),
    Refusal(
        "negative-label",
        changed_split("image", "train", label=train_rows([0, 1, 2, -1, 4, 5, 6, 7], pa.int64())),
        "train-0.parquet: row id 'train/3': label -1 is negative (1 row(s) of split 'train'); labels are class "
        "indices 0..C-1, and a row without a label holds null",
    ),
    Refusal(
        "bad-image",
        changed_split("image", "train", image=train_rows([b"not an image"] * TRAIN, pa.binary())),
        "train-0.parquet: row id ",
    ),
    Refusal(
        "empty-text",
        changed_split("text", "train", text=train_rows(["fine", "", *["more"] * 6], pa.string())),
        "train-0.parquet: row id ",
        "text",
    ),
]


def job_file(tmp_path: Path, refusal: Refusal) -> Path:
    raw = (image_job if refusal.data == "image" else text_job)(Path(DATA[refusal.data]), tmp_path / "store")
    changes = refusal.changes(tmp_path) if callable(refusal.changes) else refusal.changes
    for dotted, value in {**changes, **refusal.extra}.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module", autouse=True)
def data_folders(images, texts) -> None:
    DATA.update(image=str(images), text=str(texts))


def refused(argv: list[str], capsys, ray_watch: RayWatch) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert not ray_watch.joined(), ray_watch.joins
    return out + err


@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.id for r in REFUSALS])
def test_a_bad_job_input_is_refused_before_ray_starts(tmp_path, capsys, ray_watch, refusal):
    path = job_file(tmp_path, refusal)
    printed = refused(["plan", str(path)], capsys, ray_watch)
    assert refusal.expected.replace("{tmp}", str(tmp_path)).replace("{images}", DATA["image"]) in printed
    assert str(path) in printed  # the message names the job file
    assert SECRET not in printed
    assert not (tmp_path / "store").exists()


def test_a_job_file_that_is_not_utf8_is_named(tmp_path, capsys, ray_watch):
    path = tmp_path / "job.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert f"{path}: not a UTF-8 text file" in refused(["plan", str(path)], capsys, ray_watch)


@pytest.mark.parametrize("data", ["image", "text"])
def test_the_jobs_the_rows_change_are_valid(tmp_path, capsys, ray_watch, data):
    """Each row's phrase comes from its change: the job it changes is planned without complaint (with slices by a
    string and a dictionary-encoded column, of few values, for the image job)."""
    slices = {"evaluate.slices": ["group", "grade"]} if data == "image" else {}
    path = job_file(tmp_path, Refusal("valid", slices, "", data))
    assert main(["plan", str(path)]) == 0, capsys.readouterr()
    assert not ray_watch.joined(), ray_watch.joins
