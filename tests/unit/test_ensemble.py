"""Teacher ensembles without Ray: the config, the one combination (against hand-computed values), the reader's
combined target, the refusals, and the run and report identities."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distkd import config
from distkd.config import ConfigError
from distkd.job import Job
from distkd.labels.ensemble import COMBINATIONS, TARGET, Ensemble
from distkd.labels.formats import Format
from distkd.methods.losses import LOSSES, Targets

T = 2.0
# at T = 2 the teachers' probabilities are [1/4, 3/4] and [3/4, 1/4]
LOGITS = np.array([[[0.0, 2 * math.log(3)]], [[2 * math.log(3), 0.0]]])  # [teachers, rows, classes]
WEIGHTS = np.array([0.75, 0.25])


def test_probs_is_the_weighted_mean_of_the_teachers_probabilities_at_the_kd_temperature():
    combined = COMBINATIONS["probs"](LOGITS, WEIGHTS, T)
    mean = [0.75 * 0.25 + 0.25 * 0.75, 0.75 * 0.75 + 0.25 * 0.25]  # [0.375, 0.625]
    np.testing.assert_allclose(combined, [[T * math.log(0.375), T * math.log(0.625)]], rtol=1e-12)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(combined) / T, -1).numpy(), [mean], rtol=1e-12)


def test_the_reports_ensemble_is_its_distribution_itself_not_the_target_sharpened_by_t():
    mean = [0.375, 0.625]  # the mixture at T, as above
    probs = Ensemble(("a", "b"), tuple(WEIGHTS), "probs").predictions(list(LOGITS), T)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(probs).double(), -1).numpy(), [mean], rtol=1e-6)
    logits = Ensemble(("a", "b"), tuple(WEIGHTS), "logits").predictions(list(LOGITS), T)
    np.testing.assert_allclose(logits, COMBINATIONS["logits"](LOGITS, WEIGHTS, T), rtol=1e-6)


def test_logits_is_the_weighted_mean_of_the_teachers_logits():
    combined = COMBINATIONS["logits"](LOGITS, WEIGHTS, T)
    np.testing.assert_allclose(combined, [[0.25 * 2 * math.log(3), 0.75 * 2 * math.log(3)]], rtol=1e-12)


def test_equal_weights_and_a_shift_of_one_teachers_logits_change_nothing_that_a_loss_sees():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5, 10)) * 3
    shifted = z + rng.normal(size=(3, 5, 1))  # top-k log-probabilities: the logits less a constant per row
    for name in COMBINATIONS:
        a, b = (torch.from_numpy(COMBINATIONS[name](x, np.full(3, 1 / 3), 4.0)) for x in (z, shifted))
        torch.testing.assert_close(torch.softmax(a / 4, -1), torch.softmax(b / 4, -1))


def test_every_kd_loss_on_the_combined_target_is_its_value_on_the_mixture():
    """Hinton's term against the combined logits is T^2 * KL(mixture || student), computed by hand."""
    ensemble = Ensemble(("a", "b"), (0.75, 0.25), "probs")
    teacher = torch.from_numpy(ensemble([LOGITS[0], LOGITS[1]], T))
    student = torch.tensor([[0.3, -0.2]])
    p = torch.tensor([[0.375, 0.625]], dtype=torch.float32)
    q = torch.softmax(student / T, -1)
    expected = T**2 * (p * (p / q).log()).sum()
    kd = LOSSES["hinton"](student, Targets(logits=teacher), torch.tensor([1]), T)
    torch.testing.assert_close(kd, expected)
    for name in LOSSES:  # every registered loss takes the combined target as a teacher's logits
        assert torch.isfinite(LOSSES[name](student, Targets(logits=teacher), torch.tensor([1]), T))


def test_the_combined_target_is_per_view_and_topk_labels_of_every_class_combine_as_dense_ones():
    rng = np.random.default_rng(1)
    n, views, c = 4, 2, 5
    logits = [rng.normal(size=(n, views, c)).astype(np.float32) for _ in range(2)]
    params = rng.integers(0, 9, size=(n, views * 3))
    ids = np.array([f"train/{i}" for i in range(n)])
    dense = [{"id": ids, TARGET: z.reshape(n, -1), "views": params} for z in logits]
    ensemble = Ensemble(("a", "b"), (0.5, 0.5), "probs")
    out = ensemble.training_columns(dense, Format("dense", "float32"), views, 4.0)
    assert set(out) == {"id", TARGET, "views"} and out[TARGET].shape == (n, views * c)
    for v in range(views):
        np.testing.assert_allclose(
            out[TARGET].reshape(n, views, c)[:, v], ensemble([z[:, v] for z in logits], 4.0), rtol=1e-6
        )

    fmt = Format("topk", "float32", c, 4.0)
    topk = []
    for z in logits:
        logprob = F.log_softmax(torch.from_numpy(z) / 4.0, -1)
        top = logprob.topk(c, dim=-1)  # every class, most probable first
        topk.append({"id": ids, "teacher_index": top.indices.reshape(n, -1).numpy(), "views": params})
        topk[-1]["teacher_logprob"] = top.values.reshape(n, -1).numpy()
    from_topk = ensemble.training_columns(topk, fmt, views, 4.0)
    logits_out = torch.from_numpy(from_topk[TARGET].reshape(n, views, c))
    torch.testing.assert_close(
        torch.softmax(logits_out / 4, -1), torch.softmax(torch.from_numpy(out[TARGET].reshape(n, views, c)) / 4, -1)
    )
    kept = {
        **topk[0],
        "teacher_index": topk[0]["teacher_index"][:, :3],
        "teacher_logprob": topk[0]["teacher_logprob"][:, :3],
    }
    with pytest.raises(ValueError, match="do not keep every class"):
        Format("topk", "float32", 3, 4.0).logits(kept, 1)


def raw_job(tmp_path: Path, cifar10: Path, teacher: object, **softlabels) -> dict:
    return {
        "name": "ensemble",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 100, "val_limit": 50},
        "teacher": teacher,
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 50, "augment": False}},
        "softlabels": {"shard_rows": 50, **softlabels},
        "stages": ["softlabels", "distill", "evaluate"],
    }


def weights_file(tmp_path: Path, seed: int) -> str:
    from distkd.models.students import LeNet5

    torch.manual_seed(seed)
    path = tmp_path / f"teacher-{seed}.pt"
    torch.save(LeNet5(10).state_dict(), path)
    return str(path)


@pytest.mark.parametrize(
    ("teacher", "expected"),
    [
        ([], "key 'teacher': an ensemble is a list of at least 2 teachers, got 0"),
        ([{"name": "lenet5"}], "key 'teacher': an ensemble is a list of at least 2 teachers, got 1"),
        ([{"name": "lenet5", "weight": 0.0}, {"name": "lenet5"}], "key 'teacher.0.weight': Input should be greater"),
        ([{"name": "lenet5"}, {"name": "lenet5", "weight": -1}], "key 'teacher.1.weight': Input should be greater"),
        ([{"name": "lenet5", "epochs": 3}, {"name": "lenet5"}], "unknown key 'teacher.0.epochs'"),
        ({"name": "lenet5", "weight": 1.0}, "unknown key 'teacher.weight'"),  # one teacher has no weight
        ("lenet5", "key 'teacher': expected a mapping (one teacher) or a list of mappings (an ensemble)"),
        ({"name": "lenet5", "train": {"epochs": "x"}}, "key 'teacher.train.epochs'"),  # one teacher: as before
    ],
)
def test_bad_teacher_lists_are_refused_naming_the_key(tmp_path, cifar10, teacher, expected):
    with pytest.raises(ConfigError, match=re.escape(f"<t>: invalid job file:\n  {expected}")):
        config.parse(raw_job(tmp_path, cifar10, teacher), "<t>")


def test_combine_is_a_choice_of_two():
    raw = raw_job(Path("/tmp"), Path("/tmp"), {"name": "lenet5"}, combine="median")
    with pytest.raises(ConfigError, match="key 'softlabels.combine': Input should be 'probs' or 'logits'"):
        config.parse(raw, "<t>")


def test_an_ensemble_has_a_spec_a_run_and_an_entry_per_teacher_with_weights_summing_to_one(tmp_path, cifar10):
    teachers = [
        {"name": "lenet5", "weights": weights_file(tmp_path, 0), "weight": 3},
        {"name": "lenet5", "train": {"epochs": 1, "batch_size": 50}},
    ]
    raw = raw_job(tmp_path, cifar10, teachers)
    raw["stages"] = ["train_teacher", "softlabels", "distill", "evaluate"]
    job = Job.prepare(config.parse(raw, "<t>"))
    assert [(t.key, t.role, t.labels, t.weight) for t in job.teachers] == [
        ("teacher.0", "teacher-0", "softlabels-0", 0.75),
        ("teacher.1", "teacher-1", "softlabels-1", 0.25),
    ]
    assert job.teacher_run(0) is None and job.teacher_run(1).role == "teacher"  # only the second trains
    alone = Job.prepare(config.parse({**raw, "teacher": teachers[1]}, "<t>"))
    assert job.teacher_run(1).uri == alone.teacher_run().uri  # the same teacher's run as alone: reused
    sha = lambda uri: "0" * 64  # noqa: E731
    labels = [job.softlabel_spec(job.teacher_weights_uri(i), sha, i=i) for i in range(2)]
    assert labels[1].key == alone.softlabel_spec(alone.teacher_weights_uri(), sha).key  # and its entry


def test_the_distilled_run_is_keyed_by_each_entry_its_weight_and_the_combination(tmp_path, cifar10):
    paths = [weights_file(tmp_path, seed) for seed in range(3)]

    def distilled(weights: list[float], combine: str = "probs") -> tuple[Job, dict]:
        teachers = [{"name": "lenet5", "weights": p, "weight": w} for p, w in zip(paths, weights)]
        job = Job.prepare(config.parse(raw_job(tmp_path, cifar10, teachers, combine=combine), "<t>"))
        run = job.distilled_run(*(job.softlabel_spec(p, i=i) for i, p in enumerate(paths[: len(weights)])))
        return job, run

    job, run = distilled([1, 1])
    kd = run.identity()["kd"]
    labels = [job.softlabel_spec(p, i=i) for i, p in enumerate(paths[:2])]
    assert kd["teachers"] == [{"softlabels": s.key, "weight": 0.5} for s in labels] and kd["combine"] == "probs"
    assert "softlabels" not in kd
    assert run.softlabels.entries == tuple(s.uri for s in labels)
    uris = {run.uri, distilled([1, 2])[1].uri, distilled([1, 1], "logits")[1].uri, distilled([1, 1, 1])[1].uri}
    assert len(uris) == 4  # other weights, another combination, another teacher: another run
    assert distilled([2, 2])[1].uri == run.uri  # the same weights once normalised

    one = Job.prepare(config.parse(raw_job(tmp_path, cifar10, {"name": "lenet5", "weights": paths[0]}), "<t>"))
    single = one.distilled_run(one.softlabel_spec(paths[0]))
    assert single.identity()["kd"]["softlabels"] == one.softlabel_spec(paths[0]).key  # one teacher: as before
    assert {"teachers", "combine"}.isdisjoint(single.identity()["kd"])


def test_the_report_of_an_ensemble_combines_its_teachers_and_one_teachers_keeps_its_key(tmp_path, cifar10):
    paths = [weights_file(tmp_path, seed) for seed in range(2)]
    teachers = [{"name": "lenet5", "weights": p} for p in paths]
    job = Job.prepare(config.parse(raw_job(tmp_path, cifar10, teachers, combine="logits"), "<t>"))
    spec = job.eval_spec({t.role: (t.model, p) for t, p in zip(job.teachers, paths)}, sha256=lambda uri: uri)
    assert spec.ensemble == Ensemble(("teacher-0", "teacher-1"), (0.5, 0.5), "logits")
    # as the report's key held it when the ensemble carried the temperature: ensemble reports keep their keys
    expected = {"members": ["teacher-0", "teacher-1"], "weights": [0.5, 0.5], "combine": "logits", "temperature": 4.0}
    assert spec.identity()["ensemble"] == expected
    one = Job.prepare(config.parse(raw_job(tmp_path, cifar10, teachers[0]), "<t>"))
    assert one.eval_spec({"teacher": (one.teacher, paths[0])}).ensemble is None
    assert "ensemble" not in one.eval_spec({"teacher": (one.teacher, paths[0])}).identity()


@pytest.mark.parametrize(("top_k", "refused"), [(3, True), (10, False), (None, False)])
def test_topk_entries_combine_only_when_they_keep_every_class(tmp_path, cifar10, top_k, refused):
    paths = [weights_file(tmp_path, seed) for seed in range(2)]
    teachers = [{"name": "lenet5", "weights": p} for p in paths]
    raw = raw_job(tmp_path, cifar10, teachers, format="topk", **({"top_k": top_k} if top_k else {}))
    if not refused:
        assert Job.prepare(config.parse(raw, "<t>"))
        return
    with pytest.raises(ConfigError, match="keys 'softlabels.format', 'softlabels.top_k' and 'teacher': .*top-3"):
        Job.prepare(config.parse(raw, "<t>"))
    assert Job.prepare(config.parse({**raw, "teacher": teachers[0]}, "<t>"))  # one teacher: top-k as before
