"""The smallest model in which both embedding tables learn.

``EmbeddingLM`` embeds ids (token + learned position) and predicts the next
token through the *tied* token table: ``logits = h @ E_tok.T``. There is no
attention, so each position sees only its own token and position: the token
table learns which tokens follow which, but the positional table can only
learn one vector shared by every position (nothing position-specific reaches
the loss without a layer that mixes positions).

Example:
  >>> import jax, jax.numpy as jnp
  >>> lm = EmbeddingLM(vocab_size=50257, max_length=16, features=32)
  >>> ids_BxL = jnp.zeros((2, 16), jnp.int32)
  >>> params = lm.init(jax.random.key(0), ids_BxL)
  >>> lm.apply(params, ids_BxL).shape
  (2, 16, 50257)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxembed.modules import InputEmbedding


class EmbeddingLM(nn.Module):
    """Input embeddings with a tied next-token head.

    Attributes:
      vocab_size: rows of the token table.
      max_length: rows of the positional table (the context length).
      features: embedding width D.
      init_stddev: both tables start as N(0, init_stddev^2); small values give
        near-uniform first predictions (loss about ln(vocab_size)).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay in
        ``param_dtype``.
      param_dtype: storage dtype of the tables.
      vocab_multiple: the token table gets ``vocab_size`` rounded up to this
        multiple of rows, so it splits evenly over a ``model`` mesh axis
        (GPT-2's 50,257 -> 50,304 for 128). Padding rows are never looked up
        and are cut from the logits, so the model is the same function.
    """

    vocab_size: int
    max_length: int
    features: int
    init_stddev: float = 0.02
    dtype: Any = None
    param_dtype: Any = jnp.float32
    vocab_multiple: int = 1

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token table: ``vocab_size`` rounded up to ``vocab_multiple``."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def setup(self):
        init = nn.initializers.normal(self.init_stddev)
        self.embed = InputEmbedding(
            vocab_size=self.padded_vocab_size,
            max_length=self.max_length,
            features=self.features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            token_init=init,
            position_init=init,
            token_axes=("vocab", "embed"),
            position_axes=("position", "embed"),
        )

    def __call__(self, ids_BxL: jax.Array) -> jax.Array:
        """Returns next-token logits ``[B, L, vocab_size]``."""
        h_BxLxD = self.embed(ids_BxL)
        return self.embed.attend(h_BxLxD)[..., : self.vocab_size]


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in float32 (nats per token).

    Example:
      >>> float(cross_entropy(jnp.zeros((1, 2, 4)), jnp.array([[0, 3]])))  # ln 4
      1.3862943649291992
    """
    losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV.astype(jnp.float32), targets_BxL)
    return losses_BxL.mean()


def embedding_tables(params: Any, vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(token_VxD, position_LxD)`` of ``EmbeddingLM`` params as host numpy.

    ``vocab_size`` drops the padding rows of a padded table. Gathers shards
    from every process, so call it on all processes.

    Example:
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=2)
      >>> tok_VxD, pos_LxD = embedding_tables(lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
      >>> tok_VxD.shape, pos_LxD.shape
      ((10, 2), (4, 2))
    """
    from jax.experimental import multihost_utils

    embed = nn.unbox(params)["params"]["embed"]
    tables = (embed["token"]["embedding"], embed["position"]["embedding"])
    if jax.process_count() > 1:
        tables = multihost_utils.process_allgather(tables, tiled=True)
    token_VxD, position_LxD = (np.asarray(t, dtype=np.float32) for t in tables)
    return token_VxD[:vocab_size], position_LxD


def make_model(model_config: ml_collections.ConfigDict, *, vocab_size: int, max_length: int) -> EmbeddingLM:
    """The ``EmbeddingLM`` a config's ``model`` section describes (nanodo's ``model_factory``).

    Args:
      model_config: ``config.model`` (see ``jaxembed.config.base_config``).
      vocab_size: rows of the token table before padding (the tokenizer's, or
        ``K`` with ``model.active_vocab``).
      max_length: the context length (``config.data.max_length``).

    Example:
      >>> from jaxembed.config import tiny_config
      >>> make_model(tiny_config().model, vocab_size=50257, max_length=16).padded_vocab_size
      50304
    """
    return EmbeddingLM(
        vocab_size=vocab_size,
        max_length=max_length,
        features=model_config.features,
        init_stddev=model_config.init_stddev,
        dtype=jnp.dtype(model_config.dtype),
        param_dtype=jnp.dtype(model_config.param_dtype),
        vocab_multiple=model_config.vocab_multiple,
    )
