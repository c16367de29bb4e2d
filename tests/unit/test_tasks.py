"""The task registry (tasks.py): what a row's target is, how the teacher's outputs are stored, which loss family
reads them; classification adds nothing to any key, language_model its name; a job's task is checked before Ray."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from distkd.config import LossConfig, SoftLabelConfig
from distkd.labels.formats import Format
from distkd.methods.losses import Targets
from distkd.methods.token_losses import IGNORE, token_objective
from distkd.tasks import CLASSIFICATION, TASKS
from tests.unit.test_config_path import prepared
from tests.unit.test_job_refusals import Refusal, data_folders, images, job_file, refused, texts  # noqa: F401

LM = TASKS["language_model"]


def test_a_classification_run_keeps_its_key_and_a_language_models_is_another(cifar10, tmp_path):
    run = prepared(cifar10, tmp_path).teacher_run()
    assert run.task is CLASSIFICATION and "task" not in run.identity()
    assert dataclasses.replace(run, task=LM).identity()["task"] == "language_model"
    assert dataclasses.replace(run, task=LM).uri != run.uri


def test_classification_stores_labels_as_the_job_says_and_a_language_model_per_token_at_temperature_one():
    topk = SoftLabelConfig(format="topk", top_k=3, dtype="float16")
    assert CLASSIFICATION.label_format(topk, 10, 4.0) == Format("topk", "float16", 3, 4.0)
    assert CLASSIFICATION.label_format(SoftLabelConfig(), 10, 4.0) == Format("dense", "float16")
    eight_bits = SoftLabelConfig(format="topk", top_k=32, dtype="uint8")
    assert (
        LM.label_format(eight_bits, 500, 4.0) == LM.label_format(eight_bits, 500, 1.0) == Format("tokens", "uint8", 32)
    )
    assert LM.label_format(SoftLabelConfig(), 500, 2.0) == Format("dense", "float16")
    with pytest.raises(ValueError, match="uint8"):
        CLASSIFICATION.label_format(eight_bits, 500, 4.0)


def test_a_language_models_hard_term_and_accuracy_are_over_real_tokens_alone():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [5.0, 0.0, 0.0]]])
    targets = torch.tensor([[0, 2], [2, IGNORE]])
    real = [(0, 0, 0), (0, 1, 2), (1, 0, 2)]
    by_hand = sum(-math.log(math.exp(logits[n, i, y]) / sum(map(math.exp, logits[n, i].tolist()))) for n, i, y in real)
    assert LM.hard(logits, targets).item() == pytest.approx(by_hand)  # summed over real tokens (``Terms``)
    assert [int(u) for u in LM.units(targets).sum(dim=0)] == [3, 3]
    assert LM.loss(None, logits, targets, None, 0).item() == pytest.approx(by_hand / 3)  # a baseline: the hard term
    assert [int(x) for x in LM.hits(logits, targets)] == [2, 3]  # the padded position's argmax is not counted
    assert [int(x) for x in CLASSIFICATION.hits(logits[:, 0], torch.tensor([0, 1]))] == [1, 2]


def test_a_distilled_language_model_reads_its_loss_from_the_per_token_family(cifar10, tmp_path):
    distill = prepared(cifar10, tmp_path).config.distill.model_copy(
        update={"alpha": 0.5, "temperature": 1.0, "loss": LossConfig(name="reverse_kl")}
    )
    logits = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(2, 4 * 6, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[1, 2, 3, IGNORE], [4, 5, IGNORE, IGNORE]])
    expected = token_objective("reverse_kl", logits, Targets(logits=teacher), targets, 0.5, 1.0)
    assert LM.loss(distill, logits, targets, Targets(logits=teacher), 0).item() == expected.item()


REFUSALS = [
    Refusal("unknown-task", {"task": "regression"}, "key 'task': unknown task 'regression'; known: classification"),
    Refusal(
        "classification-loss-for-tokens",
        {"task": "language_model"},
        "key 'distill.loss': unknown per-token KD loss 'hinton'; known: forward_kl, gkd_jsd, reverse_kl",
    ),
    Refusal(
        "gkd-beta",
        {"task": "language_model", "distill.loss": {"name": "gkd_jsd", "kwargs": {"beta": 1.0}}},
        "beta must be strictly between 0 and 1",
    ),
    Refusal(
        "8-bit-classification-labels",
        {"softlabels.format": "topk", "softlabels.dtype": "uint8"},
        "key 'softlabels.dtype': uint8 values are not stored by this format",
    ),
    Refusal(
        "no-next-tokens",
        {"task": "language_model", "distill.loss": {"name": "forward_kl"}},
        "key 'task': the language_model task trains on the column 'next' of each batch, which a text input does not",
        "text",
    ),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.id for r in REFUSALS])
def test_a_jobs_task_is_checked_before_ray_starts(tmp_path, capsys, ray_watch, refusal):
    path = job_file(tmp_path, refusal)
    printed = refused(["plan", str(path)], capsys, ray_watch)
    assert refusal.expected in printed and str(path) in printed
    assert not (tmp_path / "store").exists()
