"""jaxembed's linen modules inside Flax NNX models, through ``flax.nnx.bridge.ToNNX``.

The README's snippet, run as a doctest (pytest runs ``--doctest-modules``):

  >>> import jax, jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> from jaxembed.nn.embeddings import InputEmbedding
  >>> class TinyLM(nnx.Module):
  ...     def __init__(self, vocab_size, max_length, features, *, rngs):
  ...         linen = InputEmbedding(vocab_size=vocab_size, max_length=max_length, features=features)
  ...         self.embed = nnx.bridge.ToNNX(linen, rngs=rngs)
  ...         nnx.bridge.lazy_init(self.embed, jnp.zeros((1, max_length), jnp.int32))  # creates the tables
  ...     def __call__(self, ids_BxL):
  ...         return self.embed.attend(self.embed(ids_BxL))  # tied next-token logits
  >>> model = TinyLM(50257, 16, 32, rngs=nnx.Rngs(0))
  >>> model.embed.token["embedding"].shape, model.embed.position["embedding"].shape
  ((50257, 32), (16, 32))
  >>> optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  >>> ids_BxL = jnp.array([[464, 4935, 20336, 46566]])
  >>> def loss_fn(model):
  ...     logits = model(ids_BxL[:, :-1])
  ...     return optax.softmax_cross_entropy_with_integer_labels(logits, ids_BxL[:, 1:]).mean()
  >>> loss, grads = nnx.value_and_grad(loss_fn)(model)
  >>> _ = optimizer.update(model, grads)
  >>> bool(loss_fn(model) < loss)
  True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxembed.nn.embeddings import InputEmbedding

V, L, D = 23, 6, 4


class TinyLM(nnx.Module):
    """An NNX model whose input layer is jaxembed's linen ``InputEmbedding``."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.embed = nnx.bridge.ToNNX(InputEmbedding(vocab_size=V, max_length=L, features=D), rngs=rngs)
        nnx.bridge.lazy_init(self.embed, jnp.zeros((1, L), jnp.int32))

    def __call__(self, ids_BxL: jax.Array) -> jax.Array:
        return self.embed.attend(self.embed(ids_BxL))


def linen_params():
    return InputEmbedding(vocab_size=V, max_length=L, features=D).init(jax.random.key(7), jnp.zeros((1, L), jnp.int32))


def nnx_params(model: TinyLM) -> dict:
    return nnx.to_pure_dict(nnx.state(model.embed, nnx.Param))


def test_bridge_creates_the_linen_tables():
    model = TinyLM(rngs=nnx.Rngs(0))
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), nnx_params(model))
    assert shapes == {"position": {"embedding": ((L, D), jnp.float32)}, "token": {"embedding": ((V, D), jnp.float32)}}
    # The linen initialiser (torch's N(0, 1)) ran: unit-scale entries, the two tables distinct.
    token_VxD = np.asarray(model.embed.token["embedding"])
    assert 0.5 < token_VxD.std() < 1.5
    assert not np.allclose(token_VxD[:L], np.asarray(model.embed.position["embedding"]))


def test_nnx_model_with_linen_params_matches_linen_apply():
    params = linen_params()
    model = TinyLM(rngs=nnx.Rngs(0))
    nnx.update(model.embed, nnx.State(params["params"]))  # the linen run's tables, copied in
    ids_BxL = jnp.array([[3, 0, 22, 5], [9, 9, 1, 2]])

    lin = InputEmbedding(vocab_size=V, max_length=L, features=D)
    np.testing.assert_array_equal(model.embed(ids_BxL), lin.apply(params, ids_BxL))
    # And against plain numpy: token rows plus position rows 0..3.
    tok, pos = (np.asarray(params["params"][k]["embedding"]) for k in ("token", "position"))
    np.testing.assert_allclose(np.asarray(model.embed(ids_BxL)), tok[np.asarray(ids_BxL)] + pos[:4], rtol=1e-6)
    # The NNX state goes back to linen unchanged.
    np.testing.assert_array_equal(lin.apply({"params": nnx_params(model)}, ids_BxL), lin.apply(params, ids_BxL))


def test_one_nnx_optimizer_step_matches_optax_on_the_linen_params():
    params = linen_params()
    model = TinyLM(rngs=nnx.Rngs(0))
    nnx.update(model.embed, nnx.State(params["params"]))
    tx = optax.adam(0.1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    ids_BxL = jnp.array([[4, 8, 15, 16], [22, 4, 2, 0]])  # inputs are the first 3 ids: position rows 3..5 unused

    def loss_nnx(model):
        logits = model(ids_BxL[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids_BxL[:, 1:]).mean()

    lin = InputEmbedding(vocab_size=V, max_length=L, features=D)

    def loss_linen(p):
        logits = lin.apply({"params": p}, lin.apply({"params": p}, ids_BxL[:, :-1]), method="attend")
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids_BxL[:, 1:]).mean()

    loss, grads = nnx.value_and_grad(loss_nnx)(model)
    ref_loss, ref_grads = jax.value_and_grad(loss_linen)(params["params"])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), nnx.to_pure_dict(grads)["embed"], ref_grads
    )

    optimizer.update(model, grads)
    updates, _ = tx.update(ref_grads, tx.init(params["params"]))
    expected = optax.apply_updates(params["params"], updates)
    after = nnx_params(model)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), after, expected)

    before_pos, after_pos = params["params"]["position"]["embedding"], after["position"]["embedding"]
    moved = np.abs(np.asarray(after_pos - before_pos)).max(axis=1)
    assert (moved[:3] > 0.05).all(), moved  # rows 0..2 feed the loss: Adam's first step moves them by ~lr
    np.testing.assert_array_equal(moved[3:], 0)  # positions 3..5 never reach the loss
    token_moved = np.abs(np.asarray(after["token"]["embedding"] - params["params"]["token"]["embedding"])).max(axis=1)
    assert (token_moved > 0.05).all()  # the tied softmax reaches every token row
    assert loss_nnx(model) < loss
