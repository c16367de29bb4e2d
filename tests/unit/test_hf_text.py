"""Hugging Face text models (issue 33): each model reads the text with its own tokenizer, which is part of its
identity; a folder inside an installed package is found wherever the package is; padding is masked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from distkd import config
from distkd.job import Job
from tests.conftest import REVIEWS
from tests.hf_text import tiny_bert

ROWS = 8
TRAIN = {"epochs": 1, "batch_size": 4, "augment": False, "optimizer": {"name": "adamw"}}


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("texts")
    for split in ("train", "test"):
        table = pq.read_table(sorted(REVIEWS.glob(f"{split}-*.parquet"))[0]).slice(0, ROWS)
        pq.write_table(table.select(["id", "text", "label"]), folder / f"{split}-0.parquet")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT teacher with weights and a student of a config alone, each with its own tokenizer."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "teacher": tiny_bert(root / "teacher", vocab_size=120),
        "student": tiny_bert(root / "student", vocab_size=80, layers=1, width=8, weights=False),
    }


def job(data: Path, store: Path, teacher: str, student: str, **student_settings) -> Job:
    return Job.prepare(config_with(data, store, {"name": teacher}, {"name": student, **student_settings}), "<job>")


def test_each_model_reads_the_text_with_its_own_tokenizer(texts, folders, tmp_path):
    j = job(texts, tmp_path / "store", f"hf:{folders['teacher']}", f"hf-config:{folders['student']}")
    teacher, student = j.teacher.inputs, j.student.inputs
    assert teacher.tokenizer.uri == str(folders["teacher"] / "tokenizer.json")
    assert student.tokenizer.uri == str(folders["student"] / "tokenizer.json")
    assert (teacher.shape, student.shape) == ((24,), (16,))  # the teacher's max_length; the student: the data's
    batch = {"id": ["a", "b"], "label": [0, 1], "text": ["the dress fits", "love the color " * 20]}
    for kind, folder in ((teacher, folders["teacher"]), (student, folders["student"])):
        vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
        tokens = kind.prepare(batch)["tokens"]
        short, cut = tokens[0][tokens[0] > 0] - 1, tokens[1] - 1  # ids the model sees: the tokenizer's + 1
        assert short[0] == vocab["[CLS]"] and short[-1] == vocab["[SEP]"] and (tokens[0][len(short) :] == 0).all()
        assert cut[0] == vocab["[CLS]"] and cut[-1] == vocab["[SEP]"]  # cut to max_length, its ends kept
        assert list(kind.prepare(batch)["truncated"]) == [False, True]
    # Each run and the soft labels carry the reading of the model they are made by.
    assert j.scratch_run().inputs is student and j.teacher_run().inputs is teacher
    assert j.softlabel_spec("w", sha256=lambda uri: "0" * 64).inputs is teacher
    assert j.teacher.identity()["inputs"] != j.student.identity()["inputs"]


def test_a_models_identity_changes_with_its_tokenizer_file(texts, folders, tmp_path):
    student = tiny_bert(tmp_path / "student", vocab_size=80, layers=1, width=8, weights=False)
    before = job(texts, tmp_path / "store", f"hf:{folders['teacher']}", f"hf-config:{student}")
    path = student / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["normalizer"]["lowercase"] = False  # the same vocabulary, read another way
    path.write_text(json.dumps(tok))
    after = job(texts, tmp_path / "store", f"hf:{folders['teacher']}", f"hf-config:{student}")
    assert after.student.inputs.identity()["tokenizer"] != before.student.inputs.identity()["tokenizer"]
    assert after.scratch_run().uri != before.scratch_run().uri
    assert after.teacher_run().uri == before.teacher_run().uri  # the teacher's own tokenizer did not change


def test_a_text_model_of_the_jobs_tokenizer_keeps_its_identity_unless_its_max_length_is_its_own(texts, tmp_path):
    plain = job(texts, tmp_path / "store", "text_cnn", "text_cnn")
    assert plain.student.inputs is None and "inputs" not in plain.student.identity()  # today's keys
    shorter = job(texts, tmp_path / "store", "text_cnn", "text_cnn", max_length=8)
    assert shorter.student.inputs.shape == (8,) and shorter.scratch_run().uri != plain.scratch_run().uri
    assert shorter.teacher_run().uri == plain.teacher_run().uri


def test_a_folder_inside_an_installed_package_is_found_where_the_package_is(texts, tmp_path, monkeypatch):
    package = tmp_path / "site" / "distkd_test_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    tiny_bert(package / "model", vocab_size=80, layers=1, width=8)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    name = "package:distkd_test_models/model"
    j = job(texts, tmp_path / "store", f"hf:{name}", f"hf-config:{name}")
    assert j.teacher.name == f"hf:{package / 'model'}" and j.teacher.inputs.tokenizer.uri.startswith(str(package))
    moved = tmp_path / "elsewhere"
    (tmp_path / "site").rename(moved)  # the same package installed elsewhere: the same keys
    monkeypatch.syspath_prepend(str(moved))
    sys.modules.pop("distkd_test_models", None)
    again = job(texts, tmp_path / "store", f"hf:{name}", f"hf-config:{name}")
    assert again.teacher.name.startswith(f"hf:{moved}") and again.teacher_run().uri == j.teacher_run().uri


def test_padding_is_masked_from_a_bert(folders):
    from distkd.models import sources

    model = sources.build(f"hf:{folders['teacher']}", 5, 1, 32, vocab_size=121).eval()
    row = torch.tensor([[3, 40, 41, 42, 4]])  # [CLS] three ids [SEP], each + 1
    padded = torch.cat([row, torch.zeros(1, 11, dtype=torch.long)], dim=1)
    with torch.no_grad():
        model.model.classifier.weight.mul_(1000)  # logits of a size that shows a difference
        alone = model(row)
        masked = (model(padded) - alone).abs().max()
        unmasked = model.model(input_ids=(padded - 1).clamp(min=0)).logits  # what the padding would do if seen
    assert masked < 1e-3 < 1e-2 < (unmasked - alone).abs().max()


def test_a_folder_that_holds_a_classifier_labels_with_its_own_weights_without_stage_0(texts, folders, tmp_path):
    import transformers

    from distkd.models import weights_hash
    from distkd.specs import Weights

    base = tiny_bert(tmp_path / "classifier", vocab_size=120)
    config = transformers.BertConfig.from_pretrained(base, num_labels=5)
    transformers.BertForSequenceClassification(config).save_pretrained(base)  # fine-tuned elsewhere, say
    student = {"name": f"hf-config:{folders['student']}"}
    trains = Job.prepare(config_with(texts, tmp_path / "store", {"name": f"hf:{base}"}, student), "<job>")
    assert trains.teacher_run() is not None  # without 'weights: own' the folder's weights are where stage 0 starts
    j = Job.prepare(config_with(texts, tmp_path / "store", {"name": f"hf:{base}", "weights": "own"}, student), "<j>")
    assert j.teacher_run() is None and j.teacher_weights_uri() == str(base / "model.safetensors")
    uri = j.teacher_weights_uri()
    loaded = Weights(j.teacher, uri, weights_hash(uri)).load().eval()
    expected = transformers.BertForSequenceClassification.from_pretrained(base).eval()
    tokens = torch.tensor([[3, 40, 41, 4, 0, 0]])
    with torch.no_grad():
        ids, mask = (tokens - 1).clamp(min=0), (tokens != 0).long()
        assert torch.allclose(loaded(tokens), expected(input_ids=ids, attention_mask=mask).logits)


def config_with(data: Path, store: Path, teacher: dict, student: dict) -> config.JobConfig:
    raw = {
        "name": "hf-text",
        "store": str(store),
        "data": {"uri": str(data), "num_classes": 5, "tokenizer": {"vocab_size": 300, "max_length": 16}},
        "teacher": {**teacher, "max_length": 24, "train": TRAIN},
        "student": {**student, "train": TRAIN},
    }
    return config.parse(raw, "<job>")
