"""Pretrained causal language models as teachers (issue 31): an ``hf:`` folder, Hub id or ``.gguf`` file built as
``AutoModelForCausalLM`` when the job's task is language_model, reading the documents with its own tokenizer, which
the student shares; a mismatch of vocabulary or tokenizer refused before any work, naming both."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distkd.config import ConfigError
from distkd.job import Job
from distkd.models import sources
from distkd.models.sources import NEVER, HFCausalLM
from tests.hf_text import tiny_causal, tiny_gguf
from tests.unit.test_language_model import LENGTH, lm_config
from tests.unit.test_text_inputs import ROWS, review, write


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    """Reviews of a few words, a split of ``ROWS`` each, as the language model tests read them."""
    for split, start in (("train", 0), ("test", 1)):
        write(tmp_path / "data", split, [review(start + i) for i in range(ROWS)])
    return tmp_path / "data"


@pytest.fixture(scope="module")
def causal(tmp_path_factory) -> Path:
    """A tiny causal LM whose matrix embeds more ids than its tokenizer holds (as models round theirs up)."""
    folder = tmp_path_factory.mktemp("causal") / "lm"
    tiny_causal(folder)
    tokens = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    return tiny_causal(folder, embedded=len(tokens) + 4)


def teacher_of(folder: Path | str) -> dict:
    return {"teacher": {"name": f"hf:{folder}", "weights": "own"}}


def reading(folder: Path | str) -> dict:
    return {"data.blocks": {"name": f"hf:{folder}", "max_length": LENGTH}}


def test_an_hf_causal_lm_labels_as_it_is_reading_its_own_tokenizer_which_the_student_shares(
    documents, causal, tmp_path
):
    job = Job.prepare(lm_config(documents, tmp_path / "store", **teacher_of(causal), **reading(causal)))
    vocab = json.loads((causal / "tokenizer.json").read_text())["model"]["vocab"]
    assert job.num_classes == len(vocab) + 1  # the tokenizer's ids and padding: not the 4 ids more it embeds
    assert job.student.kwargs["vocab_size"] == job.num_classes  # the built-in student follows the tokenizer
    assert job.teacher.reads(job.inputs).identity() == job.inputs.identity()
    assert job.teacher_run() is None and job.teacher_weights_uri() == str(causal / "model.safetensors")
    teacher = job.teacher.build().eval()
    assert isinstance(teacher, HFCausalLM)
    batch = job.inputs.prepare({"id": np.array(["a"]), "text": np.array(["great dress"], dtype=object), "label": [0]})
    tokens = torch.from_numpy(batch["tokens"]).long()
    real = int((tokens > 0).sum())  # the review's ids, then its end: the tokenizer's first id
    assert tokens[0, real - 1] == 1 and tokens[0, : real - 1].tolist() == [vocab[t] + 1 for t in _pieces(causal)]
    with torch.no_grad():
        logits = teacher(tokens)
        raw = teacher.model(input_ids=tokens[:, :real] - 1).logits
    assert logits.shape == (1, LENGTH, job.num_classes) and (logits[..., 0] == NEVER).all()
    torch.testing.assert_close(logits[:, :real, 1:], raw[..., : len(vocab)])  # id i + 1 is the model's token i


def _pieces(folder: Path) -> list[str]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode("great dress").tokens


def test_a_teacher_whose_vocabulary_is_not_the_students_is_refused_naming_both_tokenizers(documents, causal, tmp_path):
    trained = lm_config(documents, tmp_path / "store", **teacher_of(causal))  # data.blocks: a wordpiece of 200
    with pytest.raises(
        ConfigError,
        match=rf"key 'teacher.name': 'hf:{causal}' reads the text with the tokenizer "
        rf"{causal}/tokenizer.json \(\d+ tokens, cut at 8\); the job's 'data.blocks'.* is the "
        r"tokenizer .*/tokenizers/\w+/tokenizer.json \(200 tokens, cut at 8\): the language_model "
        "task's teacher and student must share the vocabulary",
    ):
        Job.prepare(trained)
    other = tiny_causal(tmp_path / "other", vocab_size=280)  # another tokenizer of the same alphabet
    student = {"student": {"name": f"hf-config:{other}", "train": {"batch_size": 8, "augment": False}}}
    with pytest.raises(
        ConfigError,
        match=rf"key 'student.name': 'hf-config:{other}' reads the text with the "
        rf"tokenizer {other}/tokenizer.json .* is the tokenizer {causal}/tokenizer.json",
    ):
        Job.prepare(lm_config(documents, tmp_path / "store", **teacher_of(causal), **reading(causal), **student))


def test_the_same_tokens_cut_elsewhere_are_another_reading_and_refused(documents, causal, tmp_path):
    cut = {"teacher": {"name": f"hf:{causal}", "weights": "own", "max_length": LENGTH - 2}}
    with pytest.raises(ConfigError, match=rf"key 'teacher.name': .*cut at {LENGTH - 2}\); .* cut at {LENGTH}\)"):
        Job.prepare(lm_config(documents, tmp_path / "store", **cut, **reading(causal)))


def test_a_hub_id_is_a_folder_once_downloaded_and_refused_before_work_when_it_cannot_be(
    documents, causal, tmp_path, monkeypatch
):
    import huggingface_hub

    offline = lm_config(documents, tmp_path / "store", **teacher_of("distkd-test/no-such-lm@main"), **reading(causal))
    with pytest.raises(
        ConfigError,
        match="key 'teacher.name': 'distkd-test/no-such-lm@main' is no folder here, "
        "and as a Hugging Face Hub id it could not be downloaded",
    ):
        Job.prepare(offline)
    asked = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo, revision: asked.append(revision) or str(causal)
    )
    monkeypatch.setattr(sources, "_HF_FOLDERS", {})
    hub = Job.prepare(lm_config(documents, tmp_path / "store", **teacher_of("org/tiny-lm@v1"), **reading(causal)))
    folder = Job.prepare(lm_config(documents, tmp_path / "store", **teacher_of(causal), **reading(causal)))
    assert asked == ["v1"] and hub.teacher.source == folder.teacher.source  # named by its files, not by its id
    assert hub.softlabel_spec(hub.teacher_weights_uri()).key == folder.softlabel_spec(folder.teacher_weights_uri()).key


def test_own_weights_need_a_causal_lm_in_a_language_models_job(documents, causal, tmp_path):
    config = json.loads((causal / "config.json").read_text())
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in causal.iterdir():
        (bare / file.name).write_bytes(file.read_bytes())
    (bare / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaModel"]}))
    with pytest.raises(
        ConfigError,
        match=rf"key 'teacher.weights': {bare}: 'own' needs a folder that holds a causal "
        r"LM and its model.safetensors \(it holds \['LlamaModel'\]\)",
    ):
        Job.prepare(lm_config(documents, tmp_path / "store", **teacher_of(bare), **reading(bare)))


def test_a_gguf_file_is_a_teacher_of_its_own_weights_reading_with_the_tokenizer_inside_it(documents, tmp_path):
    folder = tiny_causal(tmp_path / "lm")
    gguf = tiny_gguf(tmp_path / "tiny.gguf", folder)  # the folder's weights and tokenizer in one file
    job = Job.prepare(lm_config(documents, tmp_path / "store", **teacher_of(gguf), **reading(gguf)))
    saved = Job.prepare(lm_config(documents, tmp_path / "store", **teacher_of(folder), **reading(folder)))
    assert job.teacher.reads(job.inputs).tokenizer.uri == str(gguf) and job.num_classes == saved.num_classes
    assert job.teacher_run() is None and job.teacher_weights_uri() == str(gguf)  # the file holds its weights
    assert (
        job.teacher.source
        == "sha256:"
        + hashlib.sha256(f"tiny.gguf:{hashlib.sha256(gguf.read_bytes()).hexdigest()};".encode()).hexdigest()
    )
    rows = {"id": np.array(["a", "b"]), "text": np.array(["great dress", review(5)], dtype=object), "label": [0, 1]}
    tokens = job.inputs.prepare(rows)["tokens"]
    np.testing.assert_array_equal(tokens, saved.inputs.prepare(rows)["tokens"])  # the same tokens, from the file
    with torch.no_grad():
        logits = job.teacher.build().eval()(torch.from_numpy(tokens))
        torch.testing.assert_close(logits, saved.teacher.build().eval()(torch.from_numpy(tokens)))


def test_a_tokenizer_of_the_blocks_that_is_not_there_is_refused_naming_its_key(documents, causal, tmp_path):
    missing = {"data.blocks": {"name": "hf:package:distkd_no_such_package/lm.gguf", "max_length": LENGTH}}
    with pytest.raises(
        ConfigError,
        match="key 'data.blocks.name': 'package:distkd_no_such_package/lm.gguf': no "
        "installed package 'distkd_no_such_package'",
    ):
        Job.prepare(lm_config(documents, tmp_path / "store", **teacher_of(causal), **missing))
