"""EmbeddingLM with causal self-attention, against a float64 numpy transformer.

The reference is written out by hand from the Flax parameter tree: LayerNorm
(biased variance, eps 1e-5), per-head query/key/value projections, scaled dot
products with a lower-triangular mask, a max-shifted softmax, the output
projection, the residual add, and the tied head.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxembed.nn.embeddings import InputEmbedding
from jaxembed.nn.model import LOGICAL_AXES, CausalSelfAttentionBlock, EmbeddingLM

V, L, D, H, B = 11, 6, 8, 2, 3


def make_lm(**kwargs):
    kwargs = dict(vocab_size=V, max_length=L, features=D, init_stddev=0.5, num_layers=2, num_heads=H) | kwargs
    return EmbeddingLM(**kwargs)


def random_ids(shape, seed=1, vocab=V):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


def perturbed_params(lm, seed=0):
    """Init, then add noise to every leaf so zero biases and unit scales get tested too."""
    params = nn.unbox(jax.jit(lm.init)(jax.random.key(seed), jnp.zeros((1, L), jnp.int32)))
    rng = np.random.default_rng(seed + 100)
    return jax.tree.map(lambda x: jnp.asarray(x + 0.3 * rng.standard_normal(x.shape), x.dtype), params)


def np_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def np_causal_attention(x_BxLxD, p):
    f64 = {name: {k: np.asarray(v, np.float64) for k, v in leaf.items()} for name, leaf in p.items()}
    q_BxLxHxK = np.einsum("bld,dhk->blhk", x_BxLxD, f64["query"]["kernel"]) + f64["query"]["bias"]
    k_BxLxHxK = np.einsum("bld,dhk->blhk", x_BxLxD, f64["key"]["kernel"]) + f64["key"]["bias"]
    v_BxLxHxK = np.einsum("bld,dhk->blhk", x_BxLxD, f64["value"]["kernel"]) + f64["value"]["bias"]
    length, head_dim = x_BxLxD.shape[1], q_BxLxHxK.shape[-1]
    scores_BxHxLxL = np.einsum("bqhk,bthk->bhqt", q_BxLxHxK, k_BxLxHxK) / np.sqrt(head_dim)
    future = np.triu(np.ones((length, length), bool), k=1)  # key t > query q
    scores_BxHxLxL = np.where(future, -np.inf, scores_BxHxLxL)
    weights = np.exp(scores_BxHxLxL - scores_BxHxLxL.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    o_BxLxHxK = np.einsum("bhqt,bthk->bqhk", weights, v_BxLxHxK)
    return np.einsum("blhk,hkd->bld", o_BxLxHxK, f64["out"]["kernel"]) + f64["out"]["bias"]


def np_forward(params, ids, final_norm=False):
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    tok, pos = p["embed"]["token"]["embedding"], p["embed"]["position"]["embedding"]
    h = tok[ids] + pos[: ids.shape[-1]]
    for i in range(sum(name.startswith("block_") for name in p)):
        block = p[f"block_{i}"]
        h = h + np_causal_attention(np_layer_norm(h, block["norm"]), block["attention"])
    if final_norm:
        h = np_layer_norm(h, p["final_norm"])
    return h @ tok[:V].T


@pytest.mark.parametrize("final_norm", [False, True], ids=["no_ln_f", "ln_f"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_logits_match_numpy_transformer(final_norm, jit):
    lm = make_lm(final_norm=final_norm)
    params = perturbed_params(lm)
    ids = random_ids((B, L))
    apply = jax.jit(lm.apply) if jit else lm.apply
    logits = np.asarray(apply(params, ids))
    expected = np_forward(params, ids, final_norm)
    assert logits.shape == (B, L, V)
    np.testing.assert_allclose(logits, expected, rtol=2e-5, atol=2e-5)
    assert np.abs(expected).max() > 1  # the check is not vacuous


def test_single_block_matches_numpy_and_keeps_unbatched_shape():
    block = CausalSelfAttentionBlock(features=D, num_heads=4)
    h_BxLxD = np.random.default_rng(3).normal(size=(B, L, D)).astype(np.float32)
    params = nn.unbox(jax.jit(block.init)(jax.random.key(1), h_BxLxD))
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    h64 = h_BxLxD.astype(np.float64)
    expected = h64 + np_causal_attention(np_layer_norm(h64, p["norm"]), p["attention"])
    apply = jax.jit(block.apply)
    np.testing.assert_allclose(apply(params, h_BxLxD), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(apply(params, h_BxLxD[1]), expected[1], rtol=1e-5, atol=1e-5)


def test_jit_equals_eager_and_hidden_feeds_the_tied_head():
    lm = make_lm(vocab_multiple=8)  # 11 rows padded to 16
    params = perturbed_params(lm, seed=2)
    ids = random_ids((B, L), seed=4)
    eager, jitted = lm.apply(params, ids), jax.jit(lm.apply)(params, ids)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-5)

    h_BxLxD = lm.apply(params, ids, method=EmbeddingLM.hidden)
    table = lm.apply(params, method=EmbeddingLM.output_table)
    assert h_BxLxD.shape == (B, L, D) and table.shape == (16, D)
    np.testing.assert_allclose(np.asarray(h_BxLxD @ table[:V].T), np.asarray(eager), rtol=1e-5, atol=1e-5)


def test_changing_a_later_token_never_changes_earlier_logits():
    lm = make_lm()
    params = perturbed_params(lm, seed=5)
    apply = jax.jit(lm.apply)
    ids = random_ids((B, L), seed=6)
    base = np.asarray(apply(params, ids))
    for t in range(L - 1):
        changed = ids.copy()
        changed[:, t + 1] = (changed[:, t + 1] + 1 + np.arange(B)) % V
        out = np.asarray(apply(params, changed))
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert not np.allclose(out[:, t + 1], base[:, t + 1])  # the change is seen where allowed


def test_loss_at_position_t_has_no_gradient_on_later_position_rows():
    # nanodo's causality check, on the positional table.
    lm = make_lm()
    params = perturbed_params(lm, seed=7)
    ids, targets = random_ids((B, L), seed=8), random_ids((B, L), seed=9)

    def loss_per_position_L(p):
        logp_BxLxV = jax.nn.log_softmax(lm.apply(p, ids))
        return -jnp.take_along_axis(logp_BxLxV, targets[..., None], axis=-1)[..., 0].mean(0)

    # One Jacobian for all t: [t, row, D].
    jac = jax.jit(jax.jacrev(loss_per_position_L))(params)
    g_pos_LxLxD = np.asarray(jac["params"]["embed"]["position"]["embedding"])
    for t in range(L):
        assert not g_pos_LxLxD[t, t + 1 :].any(), t
        assert np.abs(g_pos_LxLxD[t, : t + 1]).sum(-1).all(), t  # every visible position gets gradient


def test_bfloat16_compute_with_float32_params_is_finite_and_close():
    params = perturbed_params(make_lm(), seed=10)
    ids = random_ids((B, L), seed=11)
    f32 = np.asarray(jax.jit(make_lm().apply)(params, ids))
    bf16 = jax.jit(make_lm(dtype=jnp.bfloat16).apply)(params, ids)
    assert bf16.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    bf16 = np.asarray(bf16, np.float32)
    assert np.isfinite(bf16).all()
    np.testing.assert_allclose(bf16, f32, rtol=0.05, atol=0.05 * np.abs(f32).max())


def test_every_parameter_is_logically_partitioned():
    lm = make_lm(num_layers=2, final_norm=True)
    boxed = jax.jit(lm.init)(jax.random.key(0), jnp.zeros((1, L), jnp.int32))
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(leaves) == 2 + 2 * (2 + 8) + 2  # tables, 2 x (LayerNorm + q/k/v/out), ln_f
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), name
        assert len(leaf.names) == leaf.value.ndim and all(leaf.names), name
    spec = nn.get_partition_spec(boxed)["params"]
    attention = spec["block_1"]["attention"]
    assert attention["query"]["kernel"] == PartitionSpec("embed", "heads", "kv")
    assert attention["value"]["bias"] == PartitionSpec("heads", "kv")
    assert attention["out"]["kernel"] == PartitionSpec("heads", "kv", "embed")
    assert attention["out"]["bias"] == PartitionSpec("embed")
    assert spec["block_0"]["norm"]["scale"] == spec["final_norm"]["bias"] == PartitionSpec("embed")
    assert spec["embed"]["token"]["embedding"] == PartitionSpec(*LOGICAL_AXES["token"])


class _TodaysEmbeddingLM(nn.Module):
    """EmbeddingLM before attention, written out: a padded InputEmbedding plus a cut tied head."""

    vocab_size: int
    padded: int

    def setup(self):
        init = nn.initializers.normal(0.5)
        self.embed = InputEmbedding(
            self.padded, L, D, token_init=init, position_init=init, token_axes=("vocab", "embed"),
            position_axes=("position", "embed"),
        )  # fmt: skip

    def __call__(self, ids):
        return self.embed.attend(self.embed(ids))[..., : self.vocab_size]


def test_num_layers_zero_is_the_embeddings_only_model():
    lm = make_lm(num_layers=0, vocab_multiple=8)
    ids = random_ids((B, L), seed=12)
    params = lm.init(jax.random.key(3), ids)
    old = _TodaysEmbeddingLM(V, 16)
    old_params = old.init(jax.random.key(3), ids)
    assert jax.tree.structure(params) == jax.tree.structure(old_params)
    for a, b in zip(jax.tree.leaves(nn.unbox(params)), jax.tree.leaves(nn.unbox(old_params))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(lm.apply(params, ids)), np.asarray(old.apply(old_params, ids)))
    h = lm.apply(params, ids, method=EmbeddingLM.hidden)
    np.testing.assert_array_equal(np.asarray(h), np.asarray(old.apply(old_params, ids, method=lambda m, i: m.embed(i))))


def test_out_of_range_id_poisons_only_its_own_sequence():
    lm = make_lm(vocab_multiple=8)  # ids 11..15 index padding rows
    params = perturbed_params(lm, seed=13)
    ids = random_ids((B, L), seed=14)
    ids[1, 3] = 13
    logits = np.asarray(jax.jit(lm.apply)(params, ids))
    assert np.isnan(logits[1]).all()
    assert np.isfinite(logits[[0, 2]]).all()


def test_block_rejects_input_of_the_wrong_width():
    block = CausalSelfAttentionBlock(features=D, num_heads=H)
    with pytest.raises(ValueError, match=r"\[\.\.\., L, 8\].*\(2, 3, 5\)"):
        block.init(jax.random.key(0), jnp.zeros((2, 3, 5)))
