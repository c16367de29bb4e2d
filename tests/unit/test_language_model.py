"""A language model's input and evaluation (issue 31): the blocks kind (one document a row, ended by the separator,
next-token targets, padding ignored), the job's vocabulary as its classes, and the evaluators' per-token statistics,
per slice and paired over documents, merged exactly."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from distkd.config import ConfigError
from distkd.data.blocks import IGNORE, SEPARATOR, DocumentBlocks
from distkd.evaluate import language
from distkd.evaluate.stage import Evaluator, prepared
from distkd.job import Job
from distkd.methods.losses import Targets
from distkd.methods.token_losses import token_objective, token_terms
from distkd.models import weights_hash
from distkd.specs import Weights
from distkd.tasks import TASKS
from tests.unit.test_text_inputs import ROWS, job_config, review, write

LENGTH = 8


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    """``test_text_inputs``' reviews: a text, a label and a department a row."""
    write(tmp_path / "data", "train", [review(i) for i in range(ROWS)])
    write(tmp_path / "data", "test", [review(i + 1) for i in range(ROWS)])
    return tmp_path / "data"


def lm_config(data: Path, store: Path, **changes):
    """The text job of ``test_text_inputs`` as a language model's: blocks of ``LENGTH`` tokens, causal models."""
    model = {"name": "lm_transformer", "train": {"batch_size": 8, "augment": False}}
    settings = {
        "task": "language_model",
        "data.tokenizer": None,
        "data.blocks": {"name": "wordpiece", "vocab_size": 200, "max_length": LENGTH},
        "teacher": {**model, "kwargs": {"layers": 1, "dim": 16, "heads": 2}},
        "student": {**model, "kwargs": {"layers": 1, "dim": 8, "heads": 2}},
        "distill.loss": {"name": "forward_kl"},
        "distill.temperature": 1.0,
    }
    return job_config(data, store, **{**settings, **changes})


def test_each_document_is_one_block_of_next_tokens_ended_by_the_separator(documents: Path, tmp_path: Path) -> None:
    job = Job.prepare(lm_config(documents, tmp_path / "store"))
    kind = job.inputs
    assert isinstance(kind, DocumentBlocks) and kind.shape == (LENGTH,)
    assert job.num_classes == kind.model_kwargs()["vocab_size"]  # the models predict a token of the vocabulary
    kind.ready()
    texts = [review(0), review(8), "great"]  # 3 words, 11 words (cut at 8 tokens), 1 word
    out = kind.prepare({"id": np.array(["a", "b", "c"]), "text": np.array(texts, dtype=object), "label": np.arange(3)})
    tokens, following = out["tokens"], out["next"]
    assert tokens.shape == following.shape == (3, LENGTH) and following.dtype == np.int64
    assert following[0, :2].tolist() == tokens[0, 1:3].tolist() and following[0, 2] == SEPARATOR
    assert tokens[0, 3] == SEPARATOR and (following[0, 3:] == IGNORE).all()  # after the end: nothing to predict
    assert following[1, :-1].tolist() == tokens[1, 1:].tolist() and following[1, -1] == IGNORE  # cut: unknown
    assert following[2, 0] == SEPARATOR and (tokens[2, 2:] == 0).all() and (following[2, 1:] == IGNORE).all()
    assert kind.identity() != Job.prepare(job_config(documents, tmp_path / "store")).inputs.identity()


def test_a_language_model_on_text_rows_is_refused_naming_the_kind(documents: Path, tmp_path: Path) -> None:
    text = {"data.blocks": None, "data.tokenizer": {"name": "wordpiece", "max_length": 8}}
    with pytest.raises(ConfigError, match="the language_model task trains on the column 'next'.*a text input does not"):
        Job.prepare(lm_config(documents, tmp_path / "store", **text))


def scored(documents: Path, tmp_path: Path) -> tuple[Job, dict, dict]:
    """One evaluator batch of the test split: a teacher, a distilled student and its baseline, random weights."""
    job = Job.prepare(lm_config(documents, tmp_path / "store", **{"evaluate.slices": ["department"]}))
    job.inputs.ready()
    weights = {}
    for seed, (role, spec) in enumerate(
        (("teacher", job.teacher), ("distilled", job.student), ("scratch", job.student))
    ):
        torch.manual_seed(seed)
        torch.save(spec.build().state_dict(), path := tmp_path / f"{role}.pt")
        weights[role] = Weights(spec, str(path), weights_hash(str(path)))
    rows = job.evaluated.read_table(["id", "text", "label", "department"]).to_pydict()
    batch = prepared({k: np.array(v, dtype=object) for k, v in rows.items()}, job.inputs, ("department",))
    evaluator = Evaluator(weights, job.inputs, ("department",), task="language_model")
    out = evaluator(batch)
    with torch.inference_mode():
        tokens = torch.from_numpy(batch["tokens"]).long()
        out["logits"] = {role: model(tokens).numpy() for role, model in evaluator.models.items()}
    return job, batch, out


def test_the_evaluator_sums_real_tokens_per_model_and_per_slice(documents: Path, tmp_path: Path) -> None:
    job, batch, out = scored(documents, tmp_path)
    cells = pickle.loads(out[language.CELL][0])
    real = int((batch["next"] != IGNORE).sum())
    assert len(cells) == 3 and out["rows"].tolist() == [ROWS]
    for cell in cells:
        assert int(cell["stats"]["tokens"][0]) == real
        assert sum(int(s["tokens"][0]) for s in cell["slices"]["department"].values()) == real
    assert "teacher_agree" in cells[1]["stats"] and "teacher_agree" not in cells[0]["stats"]
    assert "paired" in cells[1] and "paired" not in cells[2]  # the distilled student beside its baseline


def document_nll(logits: np.ndarray, following: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's summed next-token NLL over its real tokens and their count, by torch's cross-entropy."""
    flat = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).double().flatten(0, 1), torch.from_numpy(following).flatten(), reduction="none"
    )  # 0 where the target is IGNORE (-100, the default ignore_index)
    return flat.reshape(following.shape).sum(dim=1).numpy(), (following != IGNORE).sum(axis=1)


def test_the_perplexity_ratio_is_paired_over_documents_and_merges_over_blocks(documents: Path, tmp_path: Path) -> None:
    job, batch, out = scored(documents, tmp_path)
    following, logits = batch["next"], out["logits"]
    nll = {role: document_nll(z, following) for role, z in logits.items()}
    d, t = nll["distilled"][0] - nll["scratch"][0], nll["distilled"][1].astype(float)
    mean = d.sum() / t.sum()
    se = math.sqrt(((d - mean * t) ** 2).sum() * len(d) / (len(d) - 1)) / t.sum()  # the ratio estimator's, by hand
    halves = [
        language.paired_sums(nll["distilled"][0][p], nll["scratch"][0][p], t[p]) for p in (slice(0, 7), slice(7, None))
    ]
    vs = language.perplexity_ratio(sum(halves))  # two blocks merged
    assert vs["ratio"] == pytest.approx(math.exp(mean)) and vs["documents"] == ROWS
    assert (vs["low"], vs["high"]) == pytest.approx((math.exp(mean - 1.96 * se), math.exp(mean + 1.96 * se)), rel=1e-3)
    cells = pickle.loads(out[language.CELL][0])
    whole = language.paired_sums(nll["distilled"][0], nll["scratch"][0], t)
    assert cells[1]["paired"] == pytest.approx(whole, rel=1e-5)  # the evaluator's sums, by hand
    perplexity = {
        r: math.exp(float(c["stats"]["nll_sum"][0]) / float(c["stats"]["tokens"][0])) for r, c in zip(logits, cells)
    }
    assert vs["ratio"] == pytest.approx(perplexity["distilled"] / perplexity["scratch"])


def test_workers_shares_of_a_step_add_up_to_its_per_token_mean() -> None:
    """Two workers, each averaging its terms over the step's real tokens (``Task.units``, what the loop does before
    DDP averages the gradients), add up to the whole batch's loss; each worker's own mean would weigh a token of
    the shorter block more."""
    lm = TASKS["language_model"]
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 6, generator=generator), torch.randn(2, 4 * 6, generator=generator)
    following = torch.tensor([[1, 2, 3, IGNORE], [4, IGNORE, IGNORE, IGNORE]])  # 3 real tokens, then 1
    args = ("forward_kl", 0.5, 1.0)
    whole = token_objective(args[0], student, Targets(logits=teacher), following, *args[1:]).item()
    units = lm.units(following).sum(dim=0).tolist()
    assert units == [4, 4]
    parts = (slice(0, 1), slice(1, 2))
    shares = [token_terms(args[0], student[p], Targets(logits=teacher[p]), following[p], *args[1:]) for p in parts]
    assert sum(s.mean(*units) for s in shares).item() == pytest.approx(whole, rel=1e-6)
    own = [token_objective(args[0], student[p], Targets(logits=teacher[p]), following[p], *args[1:]) for p in parts]
    assert sum(own).item() / 2 != pytest.approx(whole, rel=1e-3)
