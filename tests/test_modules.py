"""Tests for jaxembed.nn.embeddings against numpy references (indexing, matmul, scatter-add).

Every module test runs twice, eagerly and under ``jax.jit`` (the ``maybe_jit``
fixture), since tracing changes which code paths run.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from jax.sharding import PartitionSpec
from seed_values import SEED_FIRST_BATCH

from jaxembed.nn.embeddings import InputEmbedding, PositionalEmbedding, TokenEmbedding, check_ids

VOCAB = 50257  # GPT-2
D = 256  # the seed's embedding width
CONTEXT = 4  # the seed's context length

# The seed notebook's first 8x4 batch of GPT-2 ids (stride 4, no shuffle).
SEED_IDS_8x4 = np.array(SEED_FIRST_BATCH)

# The seed's Part 1 weight matrix, as printed by its cell In[70].
SEED_TOY_TABLE_6x3 = np.array(
    [
        [0.3374, -0.1778, -0.1690],
        [0.9178, 1.5810, 1.3010],
        [1.2753, -0.2010, -0.1606],
        [-0.4015, 0.9666, -1.1481],
        [-1.1589, 0.3255, -0.6315],
        [-2.8400, -0.7849, -1.4096],
    ],
    np.float32,
)


@pytest.fixture(params=["eager", "jit"])
def maybe_jit(request):
    """``maybe_jit(fn, **jit_kwargs)``: ``fn`` itself, or ``jax.jit(fn, **jit_kwargs)``."""
    if request.param == "eager":
        return lambda fn, **jit_kwargs: fn
    return jax.jit


def table_of(params, *path: str) -> np.ndarray:
    """The (unboxed) embedding table at params["params"][*path]["embedding"] as numpy."""
    tree = nn.unbox(params)["params"]
    for name in path:
        tree = tree[name]
    return np.asarray(tree["embedding"])


def rows_all_nan(x: np.ndarray) -> np.ndarray:
    return np.isnan(np.asarray(x, np.float32)).all(axis=-1)


def mentions(message: str, *numbers: int) -> bool:
    return all(re.search(rf"(?<![\d-]){n}(?!\d)", message) for n in numbers)


# --- TokenEmbedding ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_token():
    module = TokenEmbedding(vocab_size=VOCAB, features=D)
    params = module.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))
    return module, params, table_of(params)


def test_token_default_init_is_standard_normal(gpt2_token):
    _, params, table_VxD = gpt2_token
    assert params["params"]["embedding"].dtype == jnp.float32
    assert table_VxD.shape == (VOCAB, D)
    # 12.9M samples: the sample mean/std of N(0, 1) are within ~1e-3 of 0/1.
    assert abs(table_VxD.mean()) < 0.01
    assert abs(table_VxD.std() - 1.0) < 0.01


@pytest.mark.parametrize(
    "ids", [SEED_IDS_8x4[0], SEED_IDS_8x4, np.array([0, VOCAB - 1])], ids=["ids_L", "ids_BxL", "first_and_last"]
)
def test_token_lookup_equals_numpy_indexing(gpt2_token, maybe_jit, ids):
    module, params, table_VxD = gpt2_token
    out = maybe_jit(module.apply)(params, jnp.asarray(ids))
    assert out.shape == ids.shape + (D,)
    np.testing.assert_array_equal(out, table_VxD[ids])


def test_token_attend_equals_matmul_with_transposed_table(gpt2_token, maybe_jit):
    module, params, table_VxD = gpt2_token
    h_BxLxD = np.random.default_rng(0).standard_normal((2, 3, D)).astype(np.float32)
    logits = maybe_jit(lambda p, h: module.apply(p, h, method="attend"))(params, h_BxLxD)
    assert logits.shape == (2, 3, VOCAB)
    np.testing.assert_allclose(logits, h_BxLxD @ table_VxD.T, rtol=1e-4, atol=1e-3)


def test_token_custom_init_normal_002():
    module = TokenEmbedding(VOCAB, D, embedding_init=jax.nn.initializers.normal(0.02))
    table_VxD = table_of(module.init(jax.random.key(1), jnp.zeros((1,), jnp.int32)))
    assert abs(table_VxD.mean()) < 1e-3
    assert abs(table_VxD.std() - 0.02) < 1e-3


def test_token_bf16_computes_in_bf16_with_f32_params(maybe_jit):
    module = TokenEmbedding(vocab_size=64, features=8, dtype=jnp.bfloat16)
    params = module.init(jax.random.key(2), jnp.zeros((1,), jnp.int32))
    table_VxD = table_of(params)
    assert table_VxD.dtype == np.float32
    ids_BxL = np.array([[1, 63], [5, 5]])

    out = maybe_jit(module.apply)(params, ids_BxL)
    logits = maybe_jit(lambda p, h: module.apply(p, h, method="attend"))(params, out)

    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(out, np.float32), table_VxD.astype(jnp.bfloat16).astype(np.float32)[ids_BxL]
    )
    assert logits.dtype == jnp.bfloat16


def test_seed_toy_table_lookup(maybe_jit):
    # The seed's printed lookups (e.g. [-1.5919, 0.8597, -0.6055] for id 2) are not
    # rows of its printed table: In[70] printed the weights of an earlier layer
    # before In[81] re-created it with fresh random weights. So the reference
    # here is numpy indexing of the printed table, not the printed lookups.
    module = TokenEmbedding(vocab_size=6, features=3)
    params = {"params": {"embedding": jnp.asarray(SEED_TOY_TABLE_6x3)}}
    input_ids = np.array([2, 3, 5, 1])

    out_4x3 = maybe_jit(module.apply)(params, input_ids)
    single_1x3 = maybe_jit(module.apply)(params, np.array([2]))

    np.testing.assert_array_equal(out_4x3, SEED_TOY_TABLE_6x3[input_ids])
    np.testing.assert_allclose(single_1x3, [[1.2753, -0.2010, -0.1606]], rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bool_])
def test_token_rejects_non_integer_ids(gpt2_token, dtype):
    module, params, _ = gpt2_token
    with pytest.raises(TypeError, match="integer"):
        module.apply(params, jnp.zeros((2,), dtype))


# --- PositionalEmbedding ------------------------------------------------------------

MAX_LEN = 8
POS_D = 16


@pytest.fixture(scope="module")
def positional():
    module = PositionalEmbedding(max_length=MAX_LEN, features=POS_D)
    params = module.init(jax.random.key(3), MAX_LEN)
    return module, params, table_of(params)


@pytest.mark.parametrize("length", [1, 4, MAX_LEN])
def test_positional_by_length_is_table_prefix(positional, maybe_jit, length):
    module, params, table_PxD = positional
    out_LxD = maybe_jit(lambda p: module.apply(p, length))(params)
    np.testing.assert_array_equal(out_LxD, table_PxD[:length])


@pytest.mark.parametrize("traced", [False, True], ids=["int_start", "traced_start"])
@pytest.mark.parametrize("start, length", [(0, MAX_LEN), (3, 4), (MAX_LEN - 1, 1)])
def test_positional_start_index_slices_table(positional, maybe_jit, start, length, traced):
    module, params, table_PxD = positional
    if traced:  # start_index is an argument, so a tracer under jit
        out_LxD = maybe_jit(lambda p, s: module.apply(p, length, start_index=s))(params, start)
    else:
        out_LxD = maybe_jit(lambda p: module.apply(p, length, start_index=start))(params)
    np.testing.assert_array_equal(out_LxD, table_PxD[start : start + length])


@pytest.mark.parametrize(
    "positions", [np.array([5, 0, 6, 2]), np.array([[0, 1, 2], [6, 6, 3]])], ids=["positions_L", "positions_BxL"]
)
@pytest.mark.parametrize("start", [0, 1])
def test_positional_explicit_positions_equal_numpy_take(positional, maybe_jit, positions, start):
    module, params, table_PxD = positional
    out = maybe_jit(lambda p, q: module.apply(p, positions=q, start_index=start))(params, positions)
    assert out.shape == positions.shape + (POS_D,)
    np.testing.assert_array_equal(out, np.take(table_PxD, positions + start, axis=0))


@pytest.mark.parametrize("start, length", [(5, 6), (0, MAX_LEN + 1), (MAX_LEN, 1)])
def test_positional_overflow_raises_naming_numbers(positional, start, length):
    module, params, _ = positional
    with pytest.raises(ValueError) as info:
        module.apply(params, length, start_index=start)
    assert mentions(str(info.value), start, length, MAX_LEN)


def test_positional_negative_int_start_index_raises(positional):
    module, params, _ = positional
    with pytest.raises(ValueError):
        module.apply(params, 2, start_index=-1)


@pytest.mark.parametrize("length", [0, -1, 2.0, True, None])
def test_positional_bad_length_raises(positional, length):
    module, params, _ = positional
    with pytest.raises(ValueError, match="length"):
        module.apply(params, length)


@pytest.mark.parametrize(
    "positions",
    [jnp.zeros((2, 2, 2), jnp.int32), jnp.array(3), jnp.arange(MAX_LEN + 1)],
    ids=["rank3", "rank0", "too_long"],
)
def test_positional_bad_positions_shape_raises(positional, positions):
    module, params, _ = positional
    with pytest.raises(ValueError):
        module.apply(params, positions=positions)


def test_positional_float_positions_raise_type_error(positional):
    module, params, _ = positional
    with pytest.raises(TypeError, match="integer"):
        module.apply(params, positions=jnp.array([0.0, 1.0]))


@pytest.mark.parametrize("start", [MAX_LEN - 2, -2])
def test_positional_traced_overflow_gives_nan_never_clamps(positional, start):
    """Inside jit the bounds cannot raise: out-of-range positions become NaN rows."""
    module, params, table_PxD = positional
    length = 4
    out_LxD = np.asarray(jax.jit(lambda p, s: module.apply(p, length, start_index=s))(params, start))

    wanted = np.arange(start, start + length)
    in_range = (wanted >= 0) & (wanted < MAX_LEN)
    np.testing.assert_array_equal(rows_all_nan(out_LxD), ~in_range)
    np.testing.assert_array_equal(out_LxD[in_range], table_PxD[wanted[in_range]])

    checked = checkify.checkify(jax.jit(lambda s: check_ids(jnp.arange(length) + s, MAX_LEN)))
    err, _ = checked(start)
    with pytest.raises(checkify.JaxRuntimeError):
        err.throw()
    err_ok, _ = checked(0)
    assert err_ok.get() is None


# --- InputEmbedding -----------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_input():
    """The seed's setup: GPT-2 vocabulary, 256-wide vectors, context 4."""
    module = InputEmbedding(vocab_size=VOCAB, max_length=CONTEXT, features=D)
    params = module.init(jax.random.key(4), jnp.asarray(SEED_IDS_8x4))
    return module, params, table_of(params, "token"), table_of(params, "position")


def test_input_is_token_plus_broadcast_position(seed_input, maybe_jit):
    module, params, tok_VxD, pos_LxD = seed_input
    h_BxLxD = maybe_jit(module.apply)(params, SEED_IDS_8x4)
    assert h_BxLxD.shape == (8, CONTEXT, D)
    # [8, 4, 256] + [4, 256] broadcasts over the batch, as in the seed.
    np.testing.assert_allclose(h_BxLxD, tok_VxD[SEED_IDS_8x4] + pos_LxD[:CONTEXT], rtol=1e-6)


def test_input_unbatched_ids_give_LxD(seed_input, maybe_jit):
    module, params, tok_VxD, pos_LxD = seed_input
    ids_L = SEED_IDS_8x4[3, :3]
    h_LxD = maybe_jit(module.apply)(params, ids_L)
    assert h_LxD.shape == (3, D)
    np.testing.assert_allclose(h_LxD, tok_VxD[ids_L] + pos_LxD[:3], rtol=1e-6)


def test_input_too_long_raises_naming_numbers(seed_input):
    module, params, _, _ = seed_input
    with pytest.raises(ValueError) as info:
        module.apply(params, jnp.zeros((2, CONTEXT + 1), jnp.int32))
    assert mentions(str(info.value), CONTEXT + 1, CONTEXT)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bool_])
def test_input_rejects_non_integer_ids(seed_input, dtype):
    module, params, _, _ = seed_input
    with pytest.raises(TypeError, match="integer"):
        module.apply(params, jnp.zeros((2, CONTEXT), dtype))


@pytest.mark.parametrize("shape", [(2, 2, 2), ()], ids=["rank3", "rank0"])
def test_input_rejects_bad_rank(seed_input, shape):
    module, params, _, _ = seed_input
    with pytest.raises(ValueError, match="shape"):
        module.apply(params, jnp.zeros(shape, jnp.int32))


def test_input_positions_length_mismatch_raises(seed_input):
    module, params, _, _ = seed_input
    with pytest.raises(ValueError, match="length"):
        module.apply(params, jnp.zeros((2, 3), jnp.int32), positions=jnp.arange(2))


def test_input_vmap_over_batch_equals_batched_apply(seed_input, maybe_jit):
    module, params, _, _ = seed_input
    per_sequence = jax.vmap(lambda ids_L: module.apply(params, ids_L))
    np.testing.assert_array_equal(maybe_jit(per_sequence)(SEED_IDS_8x4), module.apply(params, SEED_IDS_8x4))


# Small tables so gradients are easy to read: 20 tokens, 6 positions, width 5.
SMALL = dict(vocab_size=20, max_length=6, features=5)
IDS_3x4 = np.array([[3, 7, 7, 19], [0, 3, 11, 7], [19, 19, 2, 3]])


@pytest.fixture(scope="module")
def small_input():
    module = InputEmbedding(**SMALL)
    return module, module.init(jax.random.key(5), jnp.asarray(IDS_3x4))


def scatter_add(index_BxL: np.ndarray, cot_BxLxD: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, cot_BxLxD.shape[-1]), np.float32)
    np.add.at(out, index_BxL, cot_BxLxD)
    return out


@pytest.mark.parametrize(
    "kwargs, positions_BxL",
    [
        (dict(), np.broadcast_to(np.arange(4), IDS_3x4.shape)),
        (dict(start_index=2), np.broadcast_to(np.arange(2, 6), IDS_3x4.shape)),
        (dict(positions=np.array([5, 0, 2, 3])), np.broadcast_to([5, 0, 2, 3], IDS_3x4.shape)),
        (
            dict(positions=np.array([[0, 1, 2, 3], [1, 2, 3, 4], [4, 4, 1, 0]])),
            np.array([[0, 1, 2, 3], [1, 2, 3, 4], [4, 4, 1, 0]]),
        ),
    ],
    ids=["default", "start_index", "positions_L", "positions_BxL"],
)
def test_input_grad_is_scatter_add_on_used_rows(small_input, maybe_jit, kwargs, positions_BxL):
    module, params = small_input
    cot_BxLxD = np.random.default_rng(6).standard_normal(IDS_3x4.shape + (5,)).astype(np.float32)

    def loss(p):
        return jnp.sum(module.apply(p, IDS_3x4, **kwargs) * cot_BxLxD)

    grads = maybe_jit(jax.grad(loss))(params)["params"]
    tok_grad = np.asarray(grads["token"]["embedding"])
    pos_grad = np.asarray(grads["position"]["embedding"])

    assert set(np.flatnonzero(np.abs(tok_grad).sum(-1))) == set(IDS_3x4.ravel())
    assert set(np.flatnonzero(np.abs(pos_grad).sum(-1))) == set(positions_BxL.ravel())
    np.testing.assert_allclose(tok_grad, scatter_add(IDS_3x4, cot_BxLxD, 20), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pos_grad, scatter_add(positions_BxL, cot_BxLxD, 6), rtol=1e-5, atol=1e-6)


# --- out-of-range token ids ---------------------------------------------------------

BAD_IDS_2x4 = np.array([[1, 20, 4, 0], [-1, 19, 25, 2]])  # vocab 20: 20, -1, 25 are out
BAD_MASK_2x4 = (BAD_IDS_2x4 < 0) | (BAD_IDS_2x4 >= 20)


@pytest.mark.parametrize("which", ["token", "input"])
def test_unchecked_out_of_range_ids_give_nan_rows(small_input, maybe_jit, which):
    """Documented behaviour: no error, no clamping or wrapping; bad ids give NaN rows."""
    module, params = small_input
    if which == "token":
        module, params = TokenEmbedding(20, 5), {"params": params["params"]["token"]}
    out = np.asarray(maybe_jit(module.apply)(params, BAD_IDS_2x4))

    np.testing.assert_array_equal(rows_all_nan(out), BAD_MASK_2x4)
    assert not np.isnan(out[~BAD_MASK_2x4]).any()


@pytest.mark.parametrize(
    "ids, bad_id, index",
    [
        (np.array([3, 12, 11]), 12, "[1]"),
        (np.array([[1, 2], [3, 10]]), 10, "[1, 1]"),
        (np.array([[-1, 0]]), -1, "[0, 0]"),
    ],
)
def test_check_ids_eager_names_first_bad_id_and_index(ids, bad_id, index):
    with pytest.raises(ValueError) as info:
        check_ids(ids, upper=10)
    message = str(info.value)
    assert index in message
    assert mentions(message, bad_id)


def test_check_ids_accepts_full_range():
    check_ids(np.arange(10), upper=10)  # must not raise
    with pytest.raises(ValueError):
        check_ids(np.arange(11), upper=10)


def test_check_ids_under_checkify_jit():
    checked = checkify.checkify(jax.jit(lambda ids: check_ids(ids, upper=20)))
    err, _ = checked(jnp.asarray(BAD_IDS_2x4))
    with pytest.raises(checkify.JaxRuntimeError):
        err.throw()
    err_ok, _ = checked(jnp.asarray(IDS_3x4))
    assert err_ok.get() is None


@pytest.mark.parametrize(
    "ids, kwargs, names",
    [
        (BAD_IDS_2x4, dict(), "ids"),
        (IDS_3x4, dict(start_index=3), "positions"),  # positions 3..6, max_length 6
        (IDS_3x4, dict(positions=np.array([0, 1, 2, 6])), "positions"),
    ],
)
def test_input_check_eager_and_under_checkify(small_input, ids, kwargs, names):
    module, _ = small_input
    with pytest.raises(ValueError, match=names):
        module.check(ids, **kwargs)

    err, _ = checkify.checkify(jax.jit(lambda i: module.check(i, **kwargs)))(jnp.asarray(ids))
    with pytest.raises(checkify.JaxRuntimeError):
        err.throw()
    module.check(IDS_3x4)  # in range: must not raise


# --- logical partitioning ---------------------------------------------------------


def test_token_logical_partitioning_boxes_and_spec(maybe_jit):
    module = TokenEmbedding(20, 5, embedding_axes=("vocab", "embed"))
    params = module.init(jax.random.key(7), jnp.zeros((1,), jnp.int32))
    box = params["params"]["embedding"]
    assert isinstance(box, nn.LogicallyPartitioned)
    assert box.names == ("vocab", "embed")
    assert nn.get_partition_spec(params)["params"]["embedding"] == PartitionSpec("vocab", "embed")

    table_VxD = np.asarray(box.value)
    np.testing.assert_array_equal(maybe_jit(module.apply)(params, IDS_3x4), table_VxD[IDS_3x4])
    np.testing.assert_array_equal(maybe_jit(module.apply)(nn.unbox(params), IDS_3x4), table_VxD[IDS_3x4])


def test_input_logical_partitioning_boxes_and_spec(maybe_jit):
    module = InputEmbedding(**SMALL, token_axes=("vocab", "embed"), position_axes=("pos", "embed"))
    params = module.init(jax.random.key(8), jnp.asarray(IDS_3x4))
    spec = nn.get_partition_spec(params)["params"]
    assert spec["token"]["embedding"] == PartitionSpec("vocab", "embed")
    assert spec["position"]["embedding"] == PartitionSpec("pos", "embed")
    assert isinstance(params["params"]["position"]["embedding"], nn.LogicallyPartitioned)

    expected = table_of(params, "token")[IDS_3x4] + table_of(params, "position")[:4]
    np.testing.assert_allclose(maybe_jit(module.apply)(params, IDS_3x4), expected, rtol=1e-6)
    np.testing.assert_allclose(maybe_jit(module.apply)(nn.unbox(params), IDS_3x4), expected, rtol=1e-6)


# --- padded tables: padding rows are out of range ------------------------------------


@pytest.mark.parametrize("which", ["token", "input"])
def test_padding_rows_are_out_of_range(maybe_jit, which):
    # vocab 20 padded to 24: ids 20..23 index real (padding) rows but must act like 24 or -1.
    if which == "token":
        module = TokenEmbedding(20, 5, vocab_multiple=8)
        ids = np.array([[0, 19, 20, 23], [24, -1, 22, 7]])
    else:
        module = InputEmbedding(**SMALL, vocab_multiple=8)
        ids = np.array([[0, 19, 20, 23], [5, -1, 22, 7]])
    params = module.init(jax.random.key(9), jnp.zeros((1, 4), jnp.int32))
    table = table_of(params, *(["token"] if which == "input" else []))
    assert table.shape == (24, 5) and module.vocab_size == 20
    out = np.asarray(maybe_jit(module.apply)(params, ids))
    bad = (ids < 0) | (ids >= 20)
    np.testing.assert_array_equal(rows_all_nan(out), bad)
    if which == "token":
        np.testing.assert_array_equal(out[~bad], table[ids[~bad]])

    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        module.check(ids) if which == "input" else check_ids(ids, module.vocab_size)


def test_padded_token_attend_cuts_padding_logits(maybe_jit):
    module = TokenEmbedding(20, 5, vocab_multiple=8)
    params = module.init(jax.random.key(10), jnp.zeros((1,), jnp.int32))
    query = np.random.default_rng(11).standard_normal((3, 5)).astype(np.float32)
    logits = maybe_jit(lambda p, q: module.apply(p, q, method=TokenEmbedding.attend))(params, query)
    assert logits.shape == (3, 20)
    np.testing.assert_allclose(logits, query @ table_of(params)[:20].T, rtol=1e-5, atol=1e-6)
    assert module.apply(params, method=TokenEmbedding.table).shape == (24, 5)


# --- size validation ---------------------------------------------------------------

_TOKEN = dict(vocab_size=6, features=3)
_POSITION = dict(max_length=4, features=3)
_INPUT = dict(vocab_size=6, max_length=4, features=3)


@pytest.mark.parametrize(
    "cls, base, name, value",
    [
        (TokenEmbedding, _TOKEN, "vocab_size", 0),
        (TokenEmbedding, _TOKEN, "features", -1),
        (TokenEmbedding, _TOKEN, "vocab_multiple", 0),
        (PositionalEmbedding, _POSITION, "max_length", 0),
        (PositionalEmbedding, _POSITION, "features", 0),
        (InputEmbedding, _INPUT, "vocab_size", -3),
        (InputEmbedding, _INPUT, "max_length", 0),
        (InputEmbedding, _INPUT, "features", -1),
        (InputEmbedding, _INPUT, "vocab_multiple", -128),
    ],
)
def test_bad_sizes_raise_value_error_at_construction(cls, base, name, value):
    with pytest.raises(ValueError) as info:
        cls(**(base | {name: value}))
    message = str(info.value)
    assert f"{cls.__name__}.{name}={value}" in message and ">= 1" in message


@pytest.mark.parametrize("value", [2.0, True, "4", None])
@pytest.mark.parametrize("cls, base", [(TokenEmbedding, _TOKEN), (PositionalEmbedding, _POSITION)])
def test_non_integer_sizes_raise_type_error(cls, base, value):
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.features=.*integer >= 1"):
        cls(**(base | {"features": value}))


def test_numpy_integer_sizes_are_accepted():
    module = InputEmbedding(vocab_size=np.int64(6), max_length=np.int32(4), features=np.int64(3))
    params = module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    assert table_of(params, "token").shape == (6, 3)
