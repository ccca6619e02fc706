"""Flax linen modules for token and learned positional embeddings.

``InputEmbedding`` is the seed notebook's ``token_embedding_layer(ids) +
pos_embedding_layer(arange(L))``: token vectors ``[B, L, D]`` plus position
vectors ``[L, D]``, broadcast over the batch.

Tables are initialised like ``torch.nn.Embedding`` (standard normal) so the
notebook's numbers have the same scale; GPT-2 used ``normal(0.02)``::

  TokenEmbedding(50257, 768, embedding_init=jax.nn.initializers.normal(0.02))

Out-of-range ids cannot raise inside ``jit``; like ``flax.linen.Embed`` the
unchecked lookup returns NaN rows for them. Use ``check_ids`` eagerly or under
``jax.experimental.checkify`` for a checked path.

Example:
  >>> import jax, jax.numpy as jnp
  >>> embed = InputEmbedding(vocab_size=50257, max_length=4, features=256)
  >>> ids_BxL = jnp.zeros((8, 4), jnp.int32)
  >>> params = embed.init(jax.random.key(0), ids_BxL)
  >>> jax.jit(embed.apply)(params, ids_BxL).shape
  (8, 4, 256)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Initializer = Callable[..., jax.Array]
Axes = tuple[str | None, ...] | None

#: ``torch.nn.Embedding``'s initialisation: N(0, 1).
torch_embedding_init: Initializer = nn.initializers.normal(stddev=1.0)


def _require_integer(name: str, x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}.")
    return x


def check_ids(ids: Any, upper: int, name: str = "ids") -> None:
    """Raises if any id lies outside ``[0, upper)``; eager or under checkify.

    Eagerly it raises ``ValueError`` naming the first bad id and its position.
    Under ``jax.jit`` it records a ``checkify`` check, so wrap the caller with
    ``checkify.checkify`` and call ``err.throw()``.

    Example:
      >>> check_ids(jnp.array([1, 2]), upper=3)
      >>> from jax.experimental import checkify
      >>> err, _ = checkify.checkify(jax.jit(lambda i: check_ids(i, 3)))(jnp.array([5]))
      >>> print(err.get().split(" (`check`")[0])
      ids must lie in [0, 3); got 5 at flat index 0.
    """
    ids = _require_integer(name, ids)
    in_range = (ids >= 0) & (ids < upper)
    if isinstance(ids, jax.core.Tracer):
        first = jnp.argmin(jnp.ravel(in_range))
        checkify.check(
            jnp.all(in_range),
            f"{name} must lie in [0, {upper}); got {{bad}} at flat index {{index}}.",
            bad=jnp.ravel(ids)[first],
            index=first,
        )
        return
    if not bool(jnp.all(in_range)):
        flat = jnp.ravel(ids)
        first = int(jnp.argmin(jnp.ravel(in_range)))
        position = tuple(int(i) for i in jnp.unravel_index(first, ids.shape))
        raise ValueError(f"{name}{list(position)}={int(flat[first])} is out of range; ids must lie in [0, {upper}).")


def _lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    # mode="fill" gives NaN rows for ids >= len(table) instead of clamping;
    # wrap_negative_indices=False makes negative ids NaN too, instead of
    # silently reading table[-1], table[-2], ... (jnp.take wraps them).
    return table.at[ids].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False)


def _table(
    module: nn.Module, name: str, init: Initializer, shape: tuple[int, int], axes: Axes, param_dtype: Any
) -> jax.Array:
    if axes is not None:
        init = nn.with_logical_partitioning(init, axes)
    return module.param(name, init, shape, param_dtype)


class TokenEmbedding(nn.Module):
    """Looks up one learned vector per token id; ``attend`` gives tied logits.

    Attributes:
      vocab_size: number of rows (token ids ``0 .. vocab_size - 1``).
      features: width D of each vector.
      dtype: computation dtype (``None``: the parameter dtype).
      param_dtype: storage dtype of the table.
      embedding_init: table initialiser (default N(0, 1), as torch).
      embedding_axes: logical axis names for sharding, e.g.
        ``("vocab", "embed")``; ``None`` keeps plain arrays.

    Example:
      >>> tok = TokenEmbedding(vocab_size=6, features=3)
      >>> params = tok.init(jax.random.key(0), jnp.array([2]))
      >>> tok.apply(params, jnp.array([2, 3, 5, 1])).shape
      (4, 3)
    """

    vocab_size: int
    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    embedding_init: Initializer = torch_embedding_init
    embedding_axes: Axes = None

    def setup(self):
        self.embedding = _table(
            self,
            "embedding",
            self.embedding_init,
            (self.vocab_size, self.features),
            self.embedding_axes,
            self.param_dtype,
        )

    def _cast_table(self) -> jax.Array:
        return jnp.asarray(self.embedding, self.dtype or self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Maps ids of any shape ``[...]`` to vectors ``[..., D]``."""
        ids = _require_integer("ids", ids)
        return _lookup(self._cast_table(), ids)

    def attend(self, query: jax.Array) -> jax.Array:
        """Tied output logits: ``query[..., D] @ table.T -> [..., vocab_size]``."""
        dtype = self.dtype or self.param_dtype
        return jnp.dot(jnp.asarray(query, dtype), self._cast_table().T)


class PositionalEmbedding(nn.Module):
    """A learned vector per position ``0 .. max_length - 1`` (GPT-2 style).

    Call it with a sequence length for positions ``start_index .. start_index
    + length - 1`` (returns ``[L, D]``), or with explicit integer
    ``positions`` of shape ``[L]`` or ``[B, L]`` (packed sequences, decoding),
    to which ``start_index`` is added.

    Example:
      >>> pos = PositionalEmbedding(max_length=4, features=256)
      >>> params = pos.init(jax.random.key(0), 4)
      >>> pos.apply(params, 4).shape, pos.apply(params, positions=jnp.array([[0, 1], [2, 3]])).shape
      ((4, 256), (2, 2, 256))
    """

    max_length: int
    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    embedding_init: Initializer = torch_embedding_init
    embedding_axes: Axes = None

    def setup(self):
        self.embedding = _table(
            self,
            "embedding",
            self.embedding_init,
            (self.max_length, self.features),
            self.embedding_axes,
            self.param_dtype,
        )

    def __call__(
        self,
        length: int | None = None,
        *,
        positions: jax.Array | None = None,
        start_index: int | jax.Array = 0,
    ) -> jax.Array:
        table = jnp.asarray(self.embedding, self.dtype or self.param_dtype)
        if positions is None:
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise ValueError(f"length={length!r} must be a Python int >= 1 (or pass positions=).")
            if isinstance(start_index, (int, np.integer)):
                start_index = int(start_index)
                if start_index < 0 or start_index + length > self.max_length:
                    raise ValueError(
                        f"start_index={start_index} + length={length} exceeds "
                        f"max_length={self.max_length}: positions must lie in [0, {self.max_length})."
                    )
                return table[start_index : start_index + length]
            positions = jnp.arange(length)
        else:
            positions = _require_integer("positions", positions)
            if positions.ndim not in (1, 2):
                raise ValueError(f"positions must have shape [L] or [B, L], got shape {positions.shape}.")
            if positions.shape[-1] > self.max_length:
                raise ValueError(
                    f"positions has length {positions.shape[-1]}, longer than max_length={self.max_length}."
                )
        positions = positions + jnp.asarray(start_index, positions.dtype)
        return _lookup(table, positions)


class InputEmbedding(nn.Module):
    """Token embedding plus learned positional embedding: the model's input.

    ``ids`` of shape ``[B, L]`` (or ``[L]``) give ``[B, L, D]`` (or ``[L, D]``)
    ``= token(ids) + position(L)``, the ``[L, D]`` positions broadcast over
    the batch exactly as in the seed.

    Example:
      >>> embed = InputEmbedding(vocab_size=50257, max_length=4, features=256)
      >>> ids_BxL = jnp.array([[464, 4935, 20336, 46566]])
      >>> params = embed.init(jax.random.key(0), ids_BxL)
      >>> h_BxLxD = embed.apply(params, ids_BxL)
      >>> tok = params["params"]["token"]["embedding"]
      >>> pos = params["params"]["position"]["embedding"]
      >>> bool(jnp.allclose(h_BxLxD, tok[ids_BxL] + pos[:4]))
      True
    """

    vocab_size: int
    max_length: int
    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    token_init: Initializer = torch_embedding_init
    position_init: Initializer = torch_embedding_init
    token_axes: Axes = None
    position_axes: Axes = None

    def setup(self):
        self.token = TokenEmbedding(
            self.vocab_size,
            self.features,
            self.dtype,
            self.param_dtype,
            self.token_init,
            self.token_axes,
        )
        self.position = PositionalEmbedding(
            self.max_length,
            self.features,
            self.dtype,
            self.param_dtype,
            self.position_init,
            self.position_axes,
        )

    def __call__(
        self,
        ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        start_index: int | jax.Array = 0,
    ) -> jax.Array:
        ids = _require_integer("ids", ids)
        if ids.ndim not in (1, 2):
            raise ValueError(f"ids must have shape [L] or [B, L], got shape {ids.shape}.")
        length = ids.shape[-1]
        if length > self.max_length:
            raise ValueError(f"ids has sequence length {length}, longer than max_length={self.max_length}.")
        if positions is not None and jnp.shape(positions)[-1] != length:
            raise ValueError(f"positions has length {jnp.shape(positions)[-1]} but ids has length {length}.")
        tok_xLxD = self.token(ids)
        pos_xLxD = self.position(length, positions=positions, start_index=start_index)
        return tok_xLxD + pos_xLxD

    def attend(self, h: jax.Array) -> jax.Array:
        """Tied output logits through the token table (``[..., vocab_size]``)."""
        return self.token.attend(h)

    def check(self, ids: jax.Array, positions: jax.Array | None = None, start_index: int | jax.Array = 0) -> None:
        """``check_ids`` for token ids and the positions they will use."""
        check_ids(ids, self.vocab_size, "ids")
        if positions is None:
            positions = jnp.arange(jnp.shape(ids)[-1])
        check_ids(jnp.asarray(positions) + start_index, self.max_length, "positions")


__all__: Sequence[str] = (
    "TokenEmbedding",
    "PositionalEmbedding",
    "InputEmbedding",
    "check_ids",
    "torch_embedding_init",
)
