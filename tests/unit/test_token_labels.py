"""Per-token soft labels (format 'tokens'): top-k ids in the narrowest integer, log-probabilities at temperature 1
and the tail's log-mass, in float16 or the 8-bit code, read back through a Parquet file as the shards are."""

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distkd.labels import tokens
from distkd.labels.formats import FORMATS, TARGET_PREFIX
from distkd.models import weights_hash
from distkd.softlabels.teacher import TeacherPredictor
from distkd.specs import ModelSpec, Weights


def through_parquet(columns: dict[str, pa.Array]) -> pa.Table:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, compression="zstd")
    return pq.read_table(io.BytesIO(buffer.getvalue()))


def labelled(vocab: int, k: int, dtype: str, rows: int = 3, positions: int = 5):
    logits = torch.randn(rows, positions, vocab, generator=torch.Generator().manual_seed(vocab)) * 3
    fmt = FORMATS["tokens"].format(dtype, k, 4.0)
    table = through_parquet(fmt.columns(logits.clone()))
    read = fmt.training_columns(table)
    shaped = {name.removeprefix(TARGET_PREFIX): v.reshape(rows, positions, -1) for name, v in read.items()}
    return logits, table, shaped


@pytest.mark.parametrize(
    ("vocab", "expected"), [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)]
)
def test_ids_take_the_narrowest_unsigned_integer_of_the_vocabulary(vocab, expected):
    assert tokens.id_type(vocab) == expected


@pytest.mark.parametrize(("vocab", "id_type"), [(200, pa.uint8()), (300, pa.uint16())])
@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_stored_columns_are_the_narrow_types_and_the_format_ignores_the_kd_temperature(vocab, id_type, dtype):
    _, table, _ = labelled(vocab, 8, dtype)
    assert table.schema.field("token_index").type.value_type == id_type
    value_type = pa.float16() if dtype == "float16" else pa.uint8()
    assert table.schema.field("token_logprob").type.value_type == value_type
    assert table.schema.field("token_tail").type.value_type == value_type
    assert table.schema.field("token_logprob").type.list_size == 5 * 8  # positions x k
    assert table.schema.field("token_tail").type.list_size == 5
    assert FORMATS["tokens"].format(dtype, 8, 4.0) == FORMATS["tokens"].format(dtype, 8, 1.0)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float16", 4e-3), ("uint8", tokens.STEP / 2 + 1e-6)])
def test_read_back_top_k_and_tail_match_the_teachers_distribution_at_temperature_one(dtype, tolerance):
    vocab, k = 300, 8
    logits, _, got = labelled(vocab, k, dtype)
    exact = torch.log_softmax(logits.double(), dim=-1)
    top = exact.topk(k, dim=-1)
    assert (got["index"] == top.indices.numpy()).all()
    assert np.abs(got["logprob"] - top.values.numpy()).max() <= tolerance
    tail = torch.log1p(-top.values.exp().sum(-1)).numpy()  # in float64: no cancellation at these sizes
    assert np.abs(got["tail"][..., 0] - tail).max() <= tolerance
    total = np.exp(got["logprob"]).sum(-1) + np.exp(got["tail"][..., 0])  # k tokens and the tail: the whole mass
    assert np.abs(total - 1).max() < (0.05 if dtype == "uint8" else 5e-3)


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_k_of_the_whole_vocabulary_leaves_a_tail_of_exactly_zero(dtype):
    _, _, got = labelled(6, 6, dtype)
    assert np.isneginf(got["tail"]).all()
    assert np.isfinite(got["logprob"]).all()


def test_the_tail_is_exact_in_log_space_however_small_and_minus_infinity_where_the_rest_has_no_mass():
    logits = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(0)) * 3
    logits[0, 0] = -200.0
    logits[0, 0, :4] = 0.0  # the other 46 tokens hold about 46 exp(-200) / 4: 1 - sum(top 4) is 0 in float32
    logits[1, 1, 4:] = float("-inf")  # no mass outside the top 4
    index, logprob, tail = tokens.top_k_(logits.clone(), 4)
    exact = torch.log_softmax(logits.double(), dim=-1)
    top = exact.topk(4, dim=-1)
    expected = exact.scatter(-1, top.indices, float("-inf")).logsumexp(dim=-1)
    assert torch.equal(index, top.indices)
    assert torch.allclose(logprob.double(), top.values, atol=1e-5)
    assert abs(tail[0, 0].item() - (math.log(46 / 4) - 200)) < 1e-3
    assert tail[1, 1].item() == float("-inf")
    finite = expected.isfinite()
    assert torch.equal(finite, tail.isfinite())
    assert torch.allclose(tail.double()[finite], expected[finite], atol=1e-4)


def test_the_8_bit_code_rounds_to_sixteenths_of_a_nat_and_clamps_at_its_floor():
    logprob = np.array([0.0, -0.03, -0.04, -1.0, -15.8, -15.9, -40.0, -np.inf], dtype=np.float32)
    code = tokens.to_code(logprob)
    assert code.tolist() == [0, 0, 1, 16, 253, 254, 254, tokens.ZERO]
    back = tokens.from_code(code)
    assert back[:4] == pytest.approx([0.0, 0.0, -0.0625, -1.0])
    assert back[6] == tokens.FLOOR and np.isneginf(back[7])


class Blocks:
    """The input kind's side the teacher reads: a block of token ids as the model's input."""

    columns = ("tokens",)

    def model_input(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        return batch["tokens"].to(device).long()


def test_a_language_model_teachers_outputs_are_stored_per_position(tmp_path):
    vocab, length, k = 40, 6, 4
    model = ModelSpec("lm_transformer", {"vocab_size": vocab, "layers": 1, "dim": 8, "heads": 2}, vocab, (length,))
    path = tmp_path / "teacher.pt"
    torch.save(model.build().state_dict(), path)
    weights = Weights(model, str(path), weights_hash(str(path)))
    tokens_in = np.random.default_rng(0).integers(1, vocab, (3, length)).astype(np.int32)
    fmt = FORMATS["tokens"].format("float16", k, 1.0)
    table = TeacherPredictor(weights, Blocks(), fmt)({"id": np.array(["a", "b", "c"]), "tokens": tokens_in})
    assert table["id"].to_pylist() == ["a", "b", "c"]
    assert table.schema.field("token_index").type.list_size == length * k
    with torch.no_grad():
        expected = fmt.columns(weights.load()(torch.from_numpy(tokens_in).long()))
    assert table["token_index"].combine_chunks().equals(expected["token_index"])
