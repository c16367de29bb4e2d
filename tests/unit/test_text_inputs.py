"""Text as an input kind: found from the shards' schema, tokenised by a tokenizer trained once and kept in the
store, fed to text models that mask padding, and refused before work when rows or settings cannot be used."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distkd import config, storage
from distkd.config import ConfigError
from distkd.data import inputs, tokenizer
from distkd.data.source import DataError, Split
from distkd.data.transforms import Normalize
from distkd.distill import streaming
from distkd.distill.split import UnequalSplit
from distkd.evaluate.classification import SLICES
from distkd.evaluate.stage import Evaluator, prepared
from distkd.job import Job
from distkd.models import sources, weights_hash
from distkd.specs import Weights

WORDS = ["great", "fit", "small", "lovely", "fabric", "returned", "soft", "tight", "color", "perfect"]
ROWS = 40


def review(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 9))


def write(folder: Path, split: str, texts: list, column: str = "text", extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    table = pa.table(
        {
            "id": pa.array([f"{split}/{i}" for i in range(n)]),
            column: pa.array(texts, pa.string()),
            "label": pa.array([i % 3 for i in range(n)], pa.int64()),
            "department": pa.array(["Tops" if i % 4 else "Dresses" for i in range(n)]),
            **(extra or {}),
        }
    )
    pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write(tmp_path / "data", "train", [review(i) for i in range(ROWS)])
    write(tmp_path / "data", "test", [review(i + 1) for i in range(ROWS)])
    return tmp_path / "data"


def job_config(data: Path, store: Path, **changes) -> config.JobConfig:
    raw = {
        "name": "text",
        "store": str(store),
        "data": {"uri": str(data), "tokenizer": {"name": "wordpiece", "vocab_size": 200, "max_length": 8}},
        "teacher": {
            "name": "text_transformer",
            "kwargs": {"layers": 1, "dim": 16, "heads": 2},
            "train": {"batch_size": 8, "augment": False},
        },
        "student": {
            "name": "text_cnn",
            "kwargs": {"dim": 8, "filters": 4},
            "train": {"batch_size": 8, "augment": False},
        },
        "distill": {"alpha": 0.5},
    }
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = raw
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return config.parse(raw, "job.yaml")


def opened(folder: Path, **data) -> Split:
    """The training split of ``folder``, its input found as a job with ``data`` settings finds it."""
    return Split.open(str(folder), "train", find=inputs.finder(config.DataConfig(uri=str(folder), **data)))


def test_the_input_kind_comes_from_the_schema(data: Path, tmp_path: Path) -> None:
    assert (opened(data).input.columns, opened(data).input.kind) == (("text",), "text")
    write(tmp_path / "other", "train", [review(i) for i in range(4)], column="review")
    named = opened(tmp_path / "other", input_column="review")
    assert (named.input.columns, named.input.kind) == (("review",), "text")
    assert named.identity()["input_column"] == "review"  # another column is other data
    tabular = opened(tmp_path / "other")  # no image or text column: every other is a feature
    assert (tabular.input.kind, tabular.input.columns) == ("tabular", ("review", "department"))
    write(tmp_path / "ints", "train", [review(0)], extra={"stars": pa.array([3])})
    with pytest.raises(DataError, match="input column 'stars' holds int64 values; expected .*encoded image bytes"):
        opened(tmp_path / "ints", input_column="stars")


def test_an_image_split_keeps_its_identity(tmp_path: Path) -> None:
    """Image keys (the soft-label cache's, the runs') must not move because text arrived."""
    folder = tmp_path / "images"
    folder.mkdir()
    pq.write_table(
        pa.table({"id": ["a"], "image": pa.array([b"x"], pa.binary()), "label": [0]}), folder / "train-0.parquet"
    )
    split = opened(folder)
    assert split.input.kind == "image"
    assert set(split.identity()) == {"split", "fingerprint", "limit"}  # content, no path


def test_the_tokenizer_is_trained_once_into_the_store(data: Path, tmp_path: Path) -> None:
    job = Job.prepare(job_config(data, tmp_path / "store"))
    kind = job.inputs
    assert isinstance(kind, inputs.TextInput) and kind.shape == (8,)
    folder = kind.tokenizer.uri.rsplit("/", 1)[0]
    assert folder.startswith(str(tmp_path / "store" / "tokenizers")) and not storage.is_committed(folder)
    kind.ready()
    assert storage.is_committed(folder)
    made = Path(kind.tokenizer.uri).stat().st_mtime_ns
    meta = storage.read_json(storage.join(folder, tokenizer.META))
    longer = sum(len(review(i).split()) > 8 for i in range(ROWS))  # every word is one token of this vocabulary
    assert meta["rows"] == ROWS and meta["truncated"] == longer > 0
    again = Job.prepare(job_config(data, tmp_path / "store")).inputs  # another job, the same data and settings
    assert again.tokenizer.uri == kind.tokenizer.uri
    again.ready()
    assert Path(kind.tokenizer.uri).stat().st_mtime_ns == made  # reused, not trained again
    other = Job.prepare(job_config(data, tmp_path / "store", **{"data.tokenizer.vocab_size": 300})).inputs
    assert other.tokenizer.uri != kind.tokenizer.uri


def test_text_is_tokenised_to_fixed_length_ids_with_zero_padding(data: Path, tmp_path: Path) -> None:
    kind = Job.prepare(job_config(data, tmp_path / "store")).inputs
    kind.ready()
    texts = [review(0), review(8), "great"]
    out = kind.prepare({"id": np.array(["a", "b", "c"]), "text": np.array(texts, dtype=object), "label": np.arange(3)})
    assert out["tokens"].dtype == np.int32 and out["tokens"].shape == (3, 8)
    assert out["length"].tolist() == [3, 8, 1] and out["truncated"].tolist() == [False, True, False]
    assert (out["tokens"][2, 1:] == 0).all() and (out["tokens"][:, 0] > 0).all()
    x = kind.model_input({"tokens": torch.from_numpy(out["tokens"])}, torch.device("cpu"))
    assert x.dtype == torch.int64


@pytest.mark.parametrize("name", ["text_transformer", "text_cnn"])
def test_text_models_mask_padding(name: str) -> None:
    torch.manual_seed(0)
    model = sources.build(name, 5, 1, 16, vocab_size=30).eval()
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv1d)):
        conv.bias.data.fill_(10.0)  # a window of padding alone then scores 10: above many real ones, unless masked
    tokens = torch.randint(1, 30, (2, 16), dtype=torch.int32)
    tokens[:, 6:] = 0
    with torch.no_grad():
        padded, short = model(tokens), model(tokens[:, :6])
    assert padded.shape == (2, 5)
    torch.testing.assert_close(padded, short, rtol=1e-4, atol=1e-5)  # padding changes nothing


@pytest.mark.parametrize(
    "texts, found",
    [
        ([review(0), "", review(2)], "train-00000-of-00001.parquet: row id 'train/1': an empty text"),
        ([review(0), review(1), None], "row id 'train/2': no text \\(null\\)"),
    ],
)
def test_rows_without_text_are_refused(tmp_path: Path, texts: list, found: str) -> None:
    write(tmp_path / "data", "train", texts + [review(i) for i in range(ROWS)])
    write(tmp_path / "data", "test", [review(i) for i in range(ROWS)])
    with pytest.raises(ConfigError, match=found):
        Job.prepare(job_config(tmp_path / "data", tmp_path / "store"))


@pytest.mark.parametrize(
    "change, key", [({"softlabels.views": 2}, "softlabels.views"), ({"teacher.train.augment": True}, "teacher.train")]
)
def test_views_of_text_are_refused(data: Path, tmp_path: Path, change: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}.*image augmentations; a text input has none"):
        Job.prepare(job_config(data, tmp_path / "store", **change))


def test_a_saved_tokenizer_that_does_not_load_is_refused(data: Path, tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="key 'data.tokenizer.name': .*tok: no tokenizer that loads"):
        Job.prepare(job_config(data, tmp_path / "store", **{"data.tokenizer.name": f"hf:{tmp_path / 'tok'}"}))


def test_a_saved_tokenizer_is_used_as_it_is(data: Path, tmp_path: Path) -> None:
    trained = Job.prepare(job_config(data, tmp_path / "store")).inputs
    trained.ready()
    saved = Job.prepare(
        job_config(data, tmp_path / "store", **{"data.tokenizer.name": f"hf:{Path(trained.tokenizer.uri).parent}"})
    ).inputs
    # A trained one's models are built for the configured size (known before training), a saved one's for its own.
    meta = storage.read_json(storage.join(str(Path(trained.tokenizer.uri).parent), tokenizer.META))
    assert saved.tokenizer.vocab_size == meta["vocab_size"] + 1 <= trained.tokenizer.vocab_size
    assert saved.identity()["tokenizer"].startswith("sha256:")


def test_an_unknown_tokenizer_is_refused_before_work(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'data.tokenizer.name': unknown tokenizer 'sentencepiece'"):
        Job.prepare(job_config(data, tmp_path / "store", **{"data.tokenizer.name": "sentencepiece"}))


def test_a_text_unit_streams_as_token_rows_each_id_once(data: Path, tmp_path: Path) -> None:
    """The streamed reader's task, called as Ray Data calls it: a unit's rows come out tokenised."""
    job = Job.prepare(job_config(data, tmp_path / "store"))
    job.inputs.ready()
    units = job.train.units(16)
    items = pa.Table.from_pylist([{"unit": dataclasses.asdict(u), "shards": None} for u in units])
    columns = ["id", "tokens", "label"]
    blocks = list(streaming._unit_rows(items, None, None, None, 0, columns, job.inputs))
    assert all(set(b) == set(columns) and b["tokens"].shape[1:] == (8,) for b in blocks)
    ids = [i for b in blocks for i in b["id"]]
    assert sorted(ids) == sorted(f"train/{i}" for i in range(ROWS))
    assert streaming.block_rows(job.inputs) == streaming.BLOCK_BYTES // (4 * 8)  # int32 ids, not pixels


def test_slices_name_columns_of_the_evaluated_split(data: Path, tmp_path: Path) -> None:
    assert Job.prepare(job_config(data, tmp_path / "store", **{"evaluate.slices": ["department"]}))
    with pytest.raises(ConfigError, match=r"key 'evaluate.slices': .*test-00000-of-00001.parquet has no column 'age'"):
        Job.prepare(job_config(data, tmp_path / "store", **{"evaluate.slices": ["department", "age"]}))
    with pytest.raises(ConfigError, match="key 'evaluate.slices': 'text' is the input column"):
        Job.prepare(job_config(data, tmp_path / "store", **{"evaluate.slices": ["text"]}))


def test_the_evaluator_counts_each_slice_of_a_text_batch(data: Path, tmp_path: Path) -> None:
    """Per model, the slices' counts add up to the block's: every row in exactly one slice of each column."""
    job = Job.prepare(job_config(data, tmp_path / "store", **{"evaluate.slices": ["department"]}))
    job.inputs.ready()
    weights = {}
    for role, spec in (("teacher", job.teacher), ("distilled", job.student), ("scratch", job.student)):
        path = tmp_path / f"{role}.pt"
        torch.save(spec.build().state_dict(), path)
        weights[role] = Weights(spec, str(path), weights_hash(str(path)))
    rows = job.evaluated.read_table(["id", "text", "label", "department"]).to_pydict()
    batch = prepared({k: np.array(v, dtype=object) for k, v in rows.items()}, job.inputs, ("department",))
    out = Evaluator(weights, job.inputs, ("department",))(batch)
    per_model = pickle.loads(out[SLICES][0])
    assert len(per_model) == 3
    for i, sliced in enumerate(per_model):
        assert set(sliced["department"]) == {"Tops", "Dresses"}
        counts = sum(stats["confusion"].sum() for stats in sliced["department"].values())
        assert counts == out[f"m{i}_confusion"].sum() == ROWS
    assert "only_model" in per_model[1]["department"]["Tops"]  # the distilled student is paired with its baseline
    assert out["truncated"].tolist() == [int(batch["truncated"].sum())] and out["truncated"][0] > 0


@pytest.mark.parametrize("name", ["wordpiece", "bpe"])
def test_the_smallest_tokenizer_is_what_training_keeps_at_any_vocab_size(name: str) -> None:
    """``tokenizer.smallest`` counts exactly what the trainer keeps when asked for fewer tokens than its alphabet."""
    texts = [review(i) for i in range(ROWS)] + ["Ünïcode café, naïve—déjà vu!", "UPPER lower 123 #tags"]
    tok, trainer = tokenizer.TRAINERS[name](len(tokenizer.SPECIALS))
    tok.train_from_iterator(texts, trainer=trainer)
    assert tokenizer.smallest(name, texts) == tok.get_vocab_size()


PREPARES = """
import pickle, sys
kinds, batch, split = pickle.loads(sys.stdin.buffer.read())
for kind in kinds:
    kind.prepare(batch) if kind.name == "text" else None
print(sorted(m for m in ("torch", "distkd.models", "distkd.distill.batches") if m in sys.modules))
"""


def test_a_process_that_prepares_rows_imports_no_torch(data: Path, tmp_path: Path) -> None:
    """Ray Data's tasks unpickle the input kinds to prepare rows, and Ray Train's dataset manager its dataset
    config: torch costs each such process 2 s of CPU to import, and neither needs it."""
    text = Job.prepare(job_config(data, tmp_path / "store")).inputs
    text.ready()
    image = inputs.ImageInput("image", (3, 32, 32), Normalize((0.5,) * 3, (0.25,) * 3))
    rows = Split.open(str(data), "train").read_table(["id", "text", "label"]).to_pydict()
    batch = {name: np.array(values, dtype=object) for name, values in rows.items()}
    pickled = pickle.dumps(([text, image], batch, UnequalSplit(["train"])))
    done = subprocess.run([sys.executable, "-c", PREPARES], input=pickled, capture_output=True)
    assert done.returncode == 0 and done.stdout.decode().strip() == "[]", done.stdout + done.stderr[-2000:]
