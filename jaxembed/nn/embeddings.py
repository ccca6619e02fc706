"""Flax linen modules for token and learned positional embeddings.

``InputEmbedding`` is the seed notebook's ``token_embedding_layer(ids) +
pos_embedding_layer(arange(L))``: token vectors ``[B, L, D]`` plus position
vectors ``[L, D]``, broadcast over the batch.

Tables are initialised like ``torch.nn.Embedding`` (standard normal) so the
notebook's numbers have the same scale; GPT-2 used ``normal(0.02)``::

  TokenEmbedding(50257, 768, embedding_init=jax.nn.initializers.normal(0.02))

Out-of-range ids cannot raise inside ``jit``; like ``flax.linen.Embed`` the
unchecked lookup returns NaN rows for them (ids ``< 0`` or ``>= vocab_size``,
padding rows included). Use ``check_ids`` eagerly or under
``jax.experimental.checkify`` for a checked path.

Size attributes are validated when a module is constructed: a bad one raises
``ValueError`` (or ``TypeError`` for a non-integer) naming it, instead of an
XLA error deep inside ``init``.

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

from jaxembed.errors import InvalidArgumentError, InvalidTypeError
from jaxembed.nn.positions import SinusoidalPositionEmbedding

Initializer = Callable[..., jax.Array]
Axes = tuple[str | None, ...] | None

#: ``torch.nn.Embedding``'s initialisation: N(0, 1).
torch_embedding_init: Initializer = nn.initializers.normal(stddev=1.0)


def require_size(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    """Raises unless ``value`` is a Python/numpy integer ``>= minimum`` (bools are not sizes).

    Example:
      >>> require_size("TokenEmbedding", "features", 4)
      >>> require_size("TokenEmbedding", "features", 0)
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: TokenEmbedding.features=0 is not allowed: it must be an integer >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(
            f"{owner}.{name}={value!r} is not allowed: it must be an integer >= {minimum}, got {type(value).__name__}."
        )
    if value < minimum:
        raise InvalidArgumentError(f"{owner}.{name}={value!r} is not allowed: it must be an integer >= {minimum}.")


def require_stddev(owner: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a finite real number ``>= 0``.

    Example:
      >>> require_stddev("EmbeddingLM", "init_stddev", float("nan"))
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: EmbeddingLM.init_stddev=nan is not allowed: it must be a finite number >= 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidTypeError(f"{owner}.{name}={value!r} is not allowed: it must be a finite number >= 0.")
    if not (np.isfinite(value) and value >= 0):
        raise InvalidArgumentError(f"{owner}.{name}={value!r} is not allowed: it must be a finite number >= 0.")


def padded_size(size: int, multiple: int) -> int:
    """``size`` rounded up to a multiple of ``multiple``.

    Example:
      >>> padded_size(50257, 128)
      50304
    """
    return -(-size // multiple) * multiple


def _require_integer(name: str, x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise InvalidTypeError(f"{name} must be an integer array, got dtype {x.dtype}.")
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
        raise InvalidArgumentError(
            f"{name}{list(position)}={int(flat[first])} is out of range; ids must lie in [0, {upper})."
        )


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
      vocab_multiple: the table gets ``vocab_size`` rounded up to this multiple
        of rows (``padded_vocab_size``), so it splits evenly over a mesh axis.
        Padding rows behave as out of range: looking them up gives NaN rows,
        and ``attend`` cuts their logits.

    Raises:
      ValueError: ``vocab_size``, ``features`` or ``vocab_multiple`` is < 1
        (``TypeError`` if not an integer).

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
    vocab_multiple: int = 1

    def __post_init__(self):
        for name in ("vocab_size", "features", "vocab_multiple"):
            require_size(type(self).__name__, name, getattr(self, name))
        super().__post_init__()

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the table: ``vocab_size`` rounded up to ``vocab_multiple``."""
        return padded_size(self.vocab_size, self.vocab_multiple)

    def setup(self):
        self.embedding = _table(
            self,
            "embedding",
            self.embedding_init,
            (self.padded_vocab_size, self.features),
            self.embedding_axes,
            self.param_dtype,
        )

    def table(self) -> jax.Array:
        """The whole table ``[padded_vocab_size, D]`` (padding rows included) in the compute dtype."""
        return jnp.asarray(self.embedding, self.dtype or self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Maps ids of any shape ``[...]`` to vectors ``[..., D]``.

        Args:
          ids: integer token ids ``[...]``, valid in ``[0, vocab_size)``.

        Returns:
          ``[..., D]`` rows in the compute dtype; all-NaN rows for ids outside
          ``[0, vocab_size)`` (padding rows included).

        Raises:
          TypeError: ``ids`` is not an integer array.
        """
        ids = _require_integer("ids", ids)
        rows = _lookup(self.table(), ids)
        if self.padded_vocab_size != self.vocab_size:
            # Ids in [vocab_size, padded_vocab_size) index real (padding) rows;
            # they are out of range all the same.
            rows = jnp.where((ids < self.vocab_size)[..., None], rows, jnp.nan)
        return rows

    def attend(self, query: jax.Array) -> jax.Array:
        """Tied output logits: ``query[..., D] @ table.T -> [..., vocab_size]`` (padding cut)."""
        dtype = self.dtype or self.param_dtype
        logits = jnp.dot(jnp.asarray(query, dtype), self.table().T)
        return logits[..., : self.vocab_size]


class PositionalEmbedding(nn.Module):
    """A learned vector per position ``0 .. max_length - 1`` (GPT-2 style).

    Call it with a sequence length for positions ``start_index .. start_index
    + length - 1`` (returns ``[L, D]``), or with explicit integer
    ``positions`` of shape ``[L]`` or ``[B, L]`` (packed sequences, decoding),
    to which ``start_index`` is added.

    Raises:
      ValueError: ``max_length`` or ``features`` is < 1 (``TypeError`` if not
        an integer).

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

    def __post_init__(self):
        for name in ("max_length", "features"):
            require_size(type(self).__name__, name, getattr(self, name))
        super().__post_init__()

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
        """Position vectors, by length or by explicit positions.

        Args:
          length: number of consecutive positions ``L`` (a Python int >= 1),
            starting at ``start_index``; ignored when ``positions`` is given.
          positions: explicit integer positions ``[L]`` or ``[B, L]``
            (``L <= max_length``), to which ``start_index`` is added.
          start_index: offset of the first position; a Python int or a traced
            integer scalar (e.g. the decoding step under ``jit``).

        Returns:
          ``[L, D]`` (by length, or ``positions`` of shape ``[L]``) or
          ``[B, L, D]`` (``positions`` of shape ``[B, L]``) in the compute
          dtype. Positions outside ``[0, max_length)`` that are only known
          under ``jit`` (traced ``start_index`` or ``positions``) give NaN rows.

        Raises:
          ValueError: ``length`` is not a Python int >= 1 (without
            ``positions``); a Python-int ``start_index`` + ``length`` leaves
            ``[0, max_length]``; ``positions`` has a rank other than 1 or 2 or
            is longer than ``max_length``.
          TypeError: ``positions`` is not an integer array.
        """
        table = jnp.asarray(self.embedding, self.dtype or self.param_dtype)
        if positions is None:
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise InvalidArgumentError(f"length={length!r} must be a Python int >= 1 (or pass positions=).")
            if isinstance(start_index, (int, np.integer)):
                start_index = int(start_index)
                if start_index < 0 or start_index + length > self.max_length:
                    raise InvalidArgumentError(
                        f"start_index={start_index} + length={length} exceeds "
                        f"max_length={self.max_length}: positions must lie in [0, {self.max_length})."
                    )
                return table[start_index : start_index + length]
            positions = jnp.arange(length)
        else:
            positions = _require_integer("positions", positions)
            if positions.ndim not in (1, 2):
                raise InvalidArgumentError(f"positions must have shape [L] or [B, L], got shape {positions.shape}.")
            if positions.shape[-1] > self.max_length:
                raise InvalidArgumentError(
                    f"positions has length {positions.shape[-1]}, longer than max_length={self.max_length}."
                )
        positions = positions + jnp.asarray(start_index, positions.dtype)
        return _lookup(table, positions)


class InputEmbedding(nn.Module):
    """Token embedding plus positional embedding: the model's input.

    ``ids`` of shape ``[B, L]`` (or ``[L]``) give ``[B, L, D]`` (or ``[L, D]``)
    ``= token(ids) + position(L)``, the ``[L, D]`` positions broadcast over
    the batch exactly as in the seed. ``vocab_multiple`` pads the token table
    as in ``TokenEmbedding``.

    ``position_scheme`` picks what ``position`` adds: ``"learned"`` (``PositionalEmbedding``, the
    seed's; ids at most ``max_length`` long), ``"sinusoidal"``
    (``positions.SinusoidalPositionEmbedding``: fixed, any length) or ``"none"``
    (no ``position`` submodule: token vectors alone, any length; for rotary,
    ALiBi or no positions, which act inside attention or not at all).

    Raises:
      ValueError: ``vocab_size``, ``max_length``, ``features`` or
        ``vocab_multiple`` is < 1 (``TypeError`` if not an integer), or
        ``position_scheme`` is not ``"learned"``, ``"sinusoidal"`` or ``"none"``.

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
    vocab_multiple: int = 1
    position_scheme: str = "learned"

    def __post_init__(self):
        for name in ("vocab_size", "max_length", "features", "vocab_multiple"):
            require_size(type(self).__name__, name, getattr(self, name))
        if self.position_scheme not in ("learned", "sinusoidal", "none"):
            raise InvalidArgumentError(
                f"InputEmbedding.position_scheme={self.position_scheme!r} is not allowed; choose learned, "
                "sinusoidal or none (rotary and ALiBi act inside attention: position_scheme='none')."
            )
        super().__post_init__()

    def setup(self):
        self.token = TokenEmbedding(
            self.vocab_size,
            self.features,
            self.dtype,
            self.param_dtype,
            self.token_init,
            self.token_axes,
            vocab_multiple=self.vocab_multiple,
        )
        if self.position_scheme == "learned":
            self.position = PositionalEmbedding(
                self.max_length,
                self.features,
                self.dtype,
                self.param_dtype,
                self.position_init,
                self.position_axes,
            )
        elif self.position_scheme == "sinusoidal":
            self.position = SinusoidalPositionEmbedding(self.features, self.dtype or self.param_dtype)

    def __call__(
        self,
        ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        start_index: int | jax.Array = 0,
    ) -> jax.Array:
        """Token vectors plus position vectors.

        Args:
          ids: integer token ids ``[B, L]`` or ``[L]``, ``L <= max_length``,
            valid in ``[0, vocab_size)``.
          positions: optional explicit positions ``[L]`` or ``[B, L]`` (packed
            sequences, decoding); default ``start_index .. start_index + L - 1``.
          start_index: offset added to the positions; a Python int or a traced
            integer scalar.

        Returns:
          ``[B, L, D]`` (or ``[L, D]``) in the compute dtype: ``token(ids) +
          position``. Out-of-range ids (``< 0`` or ``>= vocab_size``, padding
          rows included) and positions known only under ``jit`` give NaN rows;
          ``check`` raises for them instead.

        Raises:
          TypeError: ``ids`` or ``positions`` is not an integer array.
          ValueError: ``ids`` has a rank other than 1 or 2 or is longer than
            ``max_length``; ``positions`` does not match ``L``; a Python-int
            ``start_index`` + ``L`` exceeds ``max_length``.
        """
        ids = _require_integer("ids", ids)
        if ids.ndim not in (1, 2):
            raise InvalidArgumentError(f"ids must have shape [L] or [B, L], got shape {ids.shape}.")
        length = ids.shape[-1]
        if length > self.max_length and self.position_scheme == "learned":
            raise InvalidArgumentError(
                f"ids has sequence length {length}, longer than max_length={self.max_length}: a learned "
                "positional table has no rows past it."
            )
        if positions is not None and jnp.shape(positions)[-1] != length:
            raise InvalidArgumentError(f"positions has length {jnp.shape(positions)[-1]} but ids has length {length}.")
        tok_xLxD = self.token(ids)
        if self.position_scheme == "none":
            return tok_xLxD
        pos_xLxD = self.position(length, positions=positions, start_index=start_index)
        return tok_xLxD + pos_xLxD

    def attend(self, h: jax.Array) -> jax.Array:
        """Tied output logits through the token table (``[..., vocab_size]``)."""
        return self.token.attend(h)

    def check(self, ids: jax.Array, positions: jax.Array | None = None, start_index: int | jax.Array = 0) -> None:
        """``check_ids`` for token ids and the positions they will use."""
        check_ids(ids, self.vocab_size, "ids")
        if self.position_scheme != "learned":
            return  # any position >= 0 has an encoding
        if positions is None:
            positions = jnp.arange(jnp.shape(ids)[-1])
        check_ids(jnp.asarray(positions) + start_index, self.max_length, "positions")


__all__: Sequence[str] = (
    "TokenEmbedding",
    "PositionalEmbedding",
    "InputEmbedding",
    "check_ids",
    "padded_size",
    "require_size",
    "require_stddev",
    "torch_embedding_init",
)
