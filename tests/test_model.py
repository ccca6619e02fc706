"""EmbeddingLM and its loss, checked against float64 numpy references.

The references are written out by hand: a lookup plus broadcast add, a matmul
with the transposed token table (the tied head), a max-shifted log-softmax,
and the analytic gradient of mean cross-entropy through both tables.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jaxembed.nn.losses import cross_entropy
from jaxembed.nn.model import CausalSelfAttentionBlock, EmbeddingLM, embedding_tables

V, L, D, B = 13, 6, 4, 3


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request):
    return jax.jit if request.param else (lambda f: f)


def init_lm(length=L, stddev=0.7, seed=0, **kwargs):
    lm = EmbeddingLM(vocab_size=V, max_length=L, features=D, init_stddev=stddev, **kwargs)
    params = lm.init(jax.random.key(seed), jnp.zeros((1, length), jnp.int32))
    return lm, params


def tables(params):
    embed = nn.unbox(params)["params"]["embed"]
    return (np.asarray(embed["token"]["embedding"], np.float64), np.asarray(embed["position"]["embedding"], np.float64))


def np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_cross_entropy(logits, targets):
    logp = np_log_softmax(np.asarray(logits, np.float64))
    picked = np.take_along_axis(logp, np.asarray(targets)[..., None], axis=-1)[..., 0]
    return -picked.mean()


def random_ids(shape, seed=1):
    return np.random.default_rng(seed).integers(0, V, size=shape).astype(np.int32)


@pytest.mark.parametrize("length", [L, 4])
def test_logits_are_tied_head_of_token_plus_position(maybe_jit, length):
    lm, params = init_lm()
    ids = random_ids((B, length))
    tok, pos = tables(params)
    expected = (tok[ids] + pos[:length]) @ tok.T
    logits = maybe_jit(lm.apply)(params, jnp.asarray(ids))
    assert logits.shape == (B, length, V)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)


def test_head_is_tied_changing_token_table_changes_head():
    # An untied head would ignore a change to a token row that no input uses.
    lm, params = init_lm()
    ids = np.zeros((1, L), np.int32)  # only token 0 is looked up
    before = np.asarray(lm.apply(params, ids))
    bumped = jax.tree_util.tree_map_with_path(
        lambda path, x: x.at[5].add(1.0) if "token" in jax.tree_util.keystr(path) else x, nn.unbox(params)
    )
    after = np.asarray(lm.apply(bumped, ids))
    changed = np.abs(after - before) > 1e-6
    assert changed[..., 5].all() and not changed[..., np.arange(V) != 5].any()


def test_init_stddev_sets_both_tables_scale():
    lm = EmbeddingLM(vocab_size=4096, max_length=512, features=16, init_stddev=0.05)
    params = lm.init(jax.random.key(0), jnp.zeros((1, 512), jnp.int32))
    tok, pos = tables(params)
    assert tok.shape == (4096, 16) and pos.shape == (512, 16)
    assert abs(tok.std() - 0.05) < 0.05 * 0.03 and abs(tok.mean()) < 0.002
    assert abs(pos.std() - 0.05) < 0.05 * 0.05


def test_small_init_gives_uniform_loss():
    lm = EmbeddingLM(vocab_size=50257, max_length=8, features=16, init_stddev=0.02)
    ids = random_ids((2, 8))
    params = lm.init(jax.random.key(0), ids)
    loss = float(jax.jit(lambda p: cross_entropy(lm.apply(p, ids), ids))(params))
    assert abs(loss - math.log(50257)) < 0.01


@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_cross_entropy_matches_numpy_log_softmax(maybe_jit, scale):
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=(B, L, V)) * scale).astype(np.float32)
    targets = random_ids((B, L), seed=3)
    loss = maybe_jit(cross_entropy)(jnp.asarray(logits), jnp.asarray(targets))
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(float(loss), np_cross_entropy(logits, targets), rtol=1e-5)


def test_cross_entropy_of_bfloat16_logits_is_float32():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(2, 3, V)) * 5, jnp.bfloat16)
    targets = random_ids((2, 3), seed=5)
    loss = cross_entropy(logits, jnp.asarray(targets))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), np_cross_entropy(np.asarray(logits, np.float32), targets), rtol=1e-5)


def test_both_tables_get_the_analytic_gradient():
    lm, params = init_lm(stddev=0.5)
    length = 4  # shorter than max_length: positions 4, 5 get no gradient
    ids = random_ids((B, length), seed=6)
    targets = random_ids((B, length), seed=7)

    grads = jax.jit(jax.grad(lambda p: cross_entropy(lm.apply(p, ids), targets)))(params)
    g_tok, g_pos = tables(grads)

    tok, pos = tables(params)
    h = (tok[ids] + pos[:length]).reshape(-1, D)  # [N, D]
    logits = h @ tok.T
    probs = np.exp(np_log_softmax(logits))
    n = h.shape[0]
    d_logits = (probs - np.eye(V)[targets.reshape(-1)]) / n
    ref_tok = d_logits.T @ h  # through the tied head
    d_h = d_logits @ tok
    np.add.at(ref_tok, ids.reshape(-1), d_h)  # through the lookup
    ref_pos = np.zeros_like(pos)
    ref_pos[:length] = d_h.reshape(B, length, D).sum(axis=0)

    np.testing.assert_allclose(g_tok, ref_tok, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_pos, ref_pos, rtol=1e-4, atol=1e-6)
    assert np.abs(g_tok).sum() > 0 and np.abs(g_pos[:length]).min(axis=1).all()
    assert not g_pos[length:].any()


def test_bfloat16_compute_keeps_float32_params():
    lm, params = init_lm(dtype=jnp.bfloat16)
    ids = random_ids((B, L))
    logits = lm.apply(params, ids)
    assert logits.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(params)))
    tok, pos = tables(params)
    np.testing.assert_allclose(np.asarray(logits, np.float32), (tok[ids] + pos) @ tok.T, rtol=0.05, atol=0.05)


def test_embedding_tables_returns_host_float32_copies():
    lm, params = init_lm()
    tok, pos = embedding_tables(params)
    assert isinstance(tok, np.ndarray) and tok.dtype == np.float32 and pos.dtype == np.float32
    ref_tok, ref_pos = tables(params)
    np.testing.assert_array_equal(tok, ref_tok.astype(np.float32))
    np.testing.assert_array_equal(pos, ref_pos.astype(np.float32))


def test_padded_vocabulary_is_the_same_function_and_padding_never_learns():
    lm, params = init_lm(vocab_multiple=8)  # 13 rows padded to 16
    tok, pos = tables(params)
    assert lm.padded_vocab_size == 16 and tok.shape == (16, D)
    ids = random_ids((B, L), seed=8)
    targets = random_ids((B, L), seed=9)
    logits = jax.jit(lm.apply)(params, ids)
    assert logits.shape == (B, L, V)
    np.testing.assert_allclose(np.asarray(logits), (tok[ids] + pos) @ tok[:V].T, rtol=1e-5, atol=1e-5)
    g_tok, _ = tables(jax.jit(jax.grad(lambda p: cross_entropy(lm.apply(p, ids), targets)))(params))
    assert not g_tok[V:].any() and g_tok[:V].any()
    tok_VxD, _ = embedding_tables(params, V)
    np.testing.assert_array_equal(tok_VxD, tok[:V].astype(np.float32))


@pytest.mark.parametrize("bad_id", [50000, 50010, 50047, 50048, -1])
def test_ids_past_vocab_size_are_out_of_range_whatever_the_padding(bad_id):
    # 50,000 rows padded to 50,048: ids 50,000..50,047 index padding rows.
    lm = EmbeddingLM(vocab_size=50000, max_length=4, features=2, vocab_multiple=128)
    ids = np.array([[7, bad_id, 49999, 0]], np.int32)
    params = jax.jit(lm.init)(jax.random.key(0), ids)
    logits = np.asarray(jax.jit(lm.apply)(params, ids))
    assert logits.shape == (1, 4, 50000)
    np.testing.assert_array_equal(np.isnan(logits).all(-1), [[False, True, False, False]])
    assert np.isfinite(logits[:, [0, 2, 3]]).all()

    with pytest.raises(ValueError, match=rf"{bad_id}.*\[0, 50000\)"):
        lm.check(ids)
    err, _ = checkify.checkify(jax.jit(lm.check))(jnp.asarray(ids))
    with pytest.raises(checkify.JaxRuntimeError, match=r"\[0, 50000\)"):
        err.throw()
    lm.check(np.array([[0, 49999]]))  # in range: must not raise


def test_check_rejects_sequences_longer_than_max_length():
    with pytest.raises(ValueError, match="positions"):
        EmbeddingLM(vocab_size=V, max_length=L, features=D).check(np.zeros((1, L + 1), np.int32))


_LM = dict(vocab_size=V, max_length=L, features=D)


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("vocab_size", 0, ">= 1"),
        ("max_length", -2, ">= 1"),
        ("features", 0, ">= 1"),
        ("vocab_multiple", 0, ">= 1"),
        ("num_layers", -1, ">= 0"),
        ("num_heads", 0, ">= 1"),
        ("num_heads", 3, "divide features=4"),
        ("init_stddev", -0.1, "finite number >= 0"),
        ("init_stddev", float("inf"), "finite number >= 0"),
        ("init_stddev", float("nan"), "finite number >= 0"),
    ],
)
def test_bad_sizes_raise_value_error_naming_attribute(name, value, allowed):
    with pytest.raises(ValueError) as info:
        EmbeddingLM(**(_LM | {name: value}))
    message = str(info.value)
    assert f"EmbeddingLM.{name}={value}" in message and allowed in message


@pytest.mark.parametrize("name, value", [("features", 4.0), ("num_layers", True), ("init_stddev", "0.02")])
def test_non_numeric_sizes_raise_type_error(name, value):
    with pytest.raises(TypeError, match=rf"EmbeddingLM\.{name}="):
        EmbeddingLM(**(_LM | {name: value}))


def test_attention_block_validates_heads():
    with pytest.raises(ValueError, match=r"CausalSelfAttentionBlock\.num_heads=3 .*divide features=8"):
        CausalSelfAttentionBlock(features=8, num_heads=3)
    with pytest.raises(ValueError, match=r"CausalSelfAttentionBlock\.features=0"):
        CausalSelfAttentionBlock(features=0)
