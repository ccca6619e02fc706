"""Ways to tell a model where a token sits: learned, sinusoidal, rotary, ALiBi, or none.

``POSITIONS`` names the schemes ``EmbeddingLM(position=...)`` (and ``model.position``) takes:

- ``"learned"``: a trained table with one row per position (GPT-2; the seed notebook's
  ``pos_embedding_layer``): ``nn.embeddings.PositionalEmbedding``. Nothing past ``max_length``.
- ``"sinusoidal"``: a fixed sin/cos table added to the token vectors (Vaswani et al. 2017,
  "Attention Is All You Need", section 3.5): ``SinusoidalPositionEmbedding``, ``sinusoidal_table``.
- ``"rope"``: queries and keys rotated by an angle proportional to their position inside
  attention, nothing added to the input (Su et al. 2021, "RoFormer", eq. 34): ``rotary_embedding``.
- ``"alibi"``: a per-head penalty linear in the query-key distance added to the attention
  logits (Press et al. 2022, "Train Short, Test Long"): ``alibi_slopes``, ``alibi_bias``.
- ``"none"``: no positional signal; causal attention alone can still learn order (Haviv et
  al. 2022, "Transformer Language Models without Positional Encodings Still Learn Positional
  Information"; Kazemnejad et al. 2023).

``causal_attention`` is the attention every block uses, with rotary or ALiBi applied; it runs
through ``jax.nn.dot_product_attention`` (which can pick cuDNN's fused kernel on GPUs).

Example:
  >>> import jax.numpy as jnp, numpy as np
  >>> sinusoidal_table(4, 6).shape, alibi_slopes(4).tolist()
  ((4, 6), [0.25, 0.0625, 0.015625, 0.00390625])
  >>> q_BxLxHxK = jnp.ones((1, 5, 2, 4))
  >>> rotary_embedding(q_BxLxHxK).shape
  (1, 5, 2, 4)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed import config
from jaxembed.errors import InvalidArgumentError, InvalidTypeError

#: The position schemes, in the order the comparison shows them (declared with the config field).
POSITIONS: tuple[str, ...] = config.POSITIONS
#: Schemes that act inside attention (they need ``num_layers >= 1``).
ATTENTION_POSITIONS: tuple[str, ...] = ("rope", "alibi")
#: Schemes with a ``[L, D]`` table added to the token vectors (the report draws it).
TABLE_POSITIONS: tuple[str, ...] = ("learned", "sinusoidal")

#: The wavelength scale of the sinusoidal table and of rotary angles (both papers use 10,000).
DEFAULT_BASE = 10_000.0


def check_position(position: Any, name: str = "position") -> str:
    """Returns ``position`` if it names a scheme of ``POSITIONS``; raises naming ``name`` otherwise.

    Example:
      >>> check_position("rope")
      'rope'
      >>> check_position("rotary", "model.position")
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: model.position='rotary' is not allowed; choose one of learned, sinusoidal, rope, alibi, none.
    """
    if position not in POSITIONS:
        raise InvalidArgumentError(f"{name}={position!r} is not allowed; choose one of {', '.join(POSITIONS)}.")
    return position


def sinusoidal_table(
    length: int, features: int, *, base: float = DEFAULT_BASE, start_index: int = 0, dtype: Any = jnp.float32
) -> jax.Array:
    """The fixed sinusoidal encoding ``[L, D]`` of Vaswani et al. 2017 (section 3.5).

    ``PE[p, 2i] = sin(p / base^(2i/D))`` and ``PE[p, 2i+1] = cos(p / base^(2i/D))`` for
    positions ``p = start_index .. start_index + L - 1``; an odd ``D`` ends with a sine column.
    Values lie in ``[-1, 1]``; every position has norm ``sqrt(D/2)`` for even ``D``.

    Raises:
      ValueError: ``length`` or ``features`` < 1, ``base`` <= 1, ``start_index`` < 0.

    Example:
      >>> np.asarray(sinusoidal_table(3, 2), np.float64).round(3).tolist()  # sin(p), cos(p)
      [[0.0, 1.0], [0.841, 0.54], [0.909, -0.416]]
    """
    for arg, value in (("length", length), ("features", features)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidArgumentError(f"{arg}={value!r} is not allowed: it must be an integer >= 1.")
    if not base > 1:
        raise InvalidArgumentError(f"base={base!r} is not allowed: it must be a number > 1.")
    if start_index < 0:
        raise InvalidArgumentError(f"start_index={start_index!r} is not allowed: it must be >= 0.")
    return _sinusoids(jnp.arange(start_index, start_index + length), features, base).astype(dtype)


def _sinusoids(positions: jax.Array, features: int, base: float) -> jax.Array:
    # Angles in float32: positions up to ~1e6 keep about 4 significant digits of the phase.
    inv_freq_F = 1.0 / base ** (jnp.arange(0, features, 2, dtype=jnp.float32) / features)
    angles_xLxF = positions.astype(jnp.float32)[..., None] * inv_freq_F
    pairs_xLxFx2 = jnp.stack([jnp.sin(angles_xLxF), jnp.cos(angles_xLxF)], axis=-1)
    return pairs_xLxFx2.reshape(*positions.shape, -1)[..., :features]


class SinusoidalPositionEmbedding(nn.Module):
    """The fixed sin/cos position vectors of Vaswani et al. 2017, with ``PositionalEmbedding``'s interface.

    No parameters (nothing for the optimiser); any position ``>= 0`` has a vector, so a model
    trained on ``L`` positions can be run on longer sequences.

    Attributes:
      features: width D.
      dtype: output dtype (default float32).
      base: wavelength scale (10,000 in the paper).

    Example:
      >>> pos = SinusoidalPositionEmbedding(features=8)
      >>> pos.init(jax.random.key(0), 4)
      {}
      >>> pos.apply({}, 4).shape, pos.apply({}, positions=jnp.array([[0, 9]])).shape
      ((4, 8), (1, 2, 8))
    """

    features: int
    dtype: Any = None
    base: float = DEFAULT_BASE

    @nn.compact
    def __call__(
        self, length: int | None = None, *, positions: jax.Array | None = None, start_index: int | jax.Array = 0
    ) -> jax.Array:
        """``[L, D]`` for ``length`` positions from ``start_index``, or ``[..., L, D]`` for explicit ``positions``.

        Raises:
          ValueError: ``length`` is not an int >= 1 (without ``positions``).
          TypeError: ``positions`` is not an integer array.
        """
        if positions is None:
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise InvalidArgumentError(f"length={length!r} must be a Python int >= 1 (or pass positions=).")
            positions = jnp.arange(length)
        elif not jnp.issubdtype(jnp.asarray(positions).dtype, jnp.integer):
            raise InvalidTypeError(f"positions must be an integer array, got dtype {jnp.asarray(positions).dtype}.")
        positions = jnp.asarray(positions) + start_index
        return _sinusoids(positions, self.features, self.base).astype(self.dtype or jnp.float32)


def rotary_embedding(
    x_BxLxHxK: jax.Array, positions_L: jax.Array | None = None, *, base: float = DEFAULT_BASE
) -> jax.Array:
    """Rotates each pair of channels ``(2i, 2i+1)`` by ``position * base^(-2i/K)`` (RoFormer, eq. 34).

    Applied to queries and keys, the score ``q_m . k_n`` then depends on their positions only
    through ``m - n``. Computed in float32, returned in ``x``'s dtype.

    Args:
      x_BxLxHxK: queries or keys ``[..., L, H, K]`` with an even head width ``K``.
      positions_L: integer positions ``[L]``; default ``0 .. L - 1``.
      base: the angle scale (10,000 in the paper).

    Raises:
      ValueError: ``K`` is odd, or ``positions_L`` is not ``[L]``.

    Example:
      >>> x_BxLxHxK = jnp.tile(jnp.array([1.0, 0.0]), (1, 2, 1, 1))  # B=1, L=2, H=1, K=2
      >>> np.asarray(rotary_embedding(x_BxLxHxK), np.float64)[0, :, 0].round(3).tolist()  # rotated by 0 and 1 radian
      [[1.0, 0.0], [0.54, 0.841]]
    """
    length, width = x_BxLxHxK.shape[-3], x_BxLxHxK.shape[-1]
    if width % 2:
        raise InvalidArgumentError(f"rotary_embedding needs an even head width (features // num_heads); got {width}.")
    positions_L = jnp.arange(length) if positions_L is None else jnp.asarray(positions_L)
    if positions_L.shape != (length,):
        raise InvalidArgumentError(f"positions_L has shape {positions_L.shape}; expected ({length},).")
    inv_freq_F = 1.0 / base ** (jnp.arange(0, width, 2, dtype=jnp.float32) / width)
    angles_LxF = positions_L.astype(jnp.float32)[:, None] * inv_freq_F
    cos_Lx1xF, sin_Lx1xF = jnp.cos(angles_LxF)[:, None], jnp.sin(angles_LxF)[:, None]
    x = x_BxLxHxK.astype(jnp.float32)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = jnp.stack([even * cos_Lx1xF - odd * sin_Lx1xF, even * sin_Lx1xF + odd * cos_Lx1xF], axis=-1)
    return rotated.reshape(x.shape).astype(x_BxLxHxK.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi's head slopes ``[H]`` (Press et al. 2022, section 3).

    For ``H`` a power of two, the geometric sequence starting at and with ratio ``2^(-8/H)``
    (8 heads: 1/2, 1/4, ..., 1/256). Otherwise the paper's rule: the slopes of the largest power
    of two ``P < H``, then every other slope of ``2P`` heads for the remaining ``H - P``.

    Raises:
      ValueError: ``num_heads`` < 1.

    Example:
      >>> alibi_slopes(8).tolist()[:3], len(alibi_slopes(12))
      ([0.5, 0.25, 0.125], 12)
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise InvalidArgumentError(f"num_heads={num_heads!r} is not allowed: it must be an integer >= 1.")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return np.array(power_of_two(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = alibi_slopes(2 * closest)[0::2][: num_heads - closest]
    return np.concatenate([power_of_two(closest), extra])


def alibi_bias(num_heads: int, length: int) -> jax.Array:
    """The ALiBi bias ``[H, L, L]`` added to attention logits: ``-slope_h * (i - j)`` for query ``i``, key ``j``.

    Zero on the diagonal and more negative the further back a key is; entries above the
    diagonal (future keys) are positive but always masked by causal attention.

    Example:
      >>> (alibi_bias(2, 3)[0] + 0.0).tolist()  # head 0 of 2: slope 2^(-8/2) = 1/16
      [[0.0, 0.0625, 0.125], [-0.0625, 0.0, 0.0625], [-0.125, -0.0625, 0.0]]
    """
    slopes_H = jnp.asarray(alibi_slopes(num_heads), jnp.float32)
    distance_LxL = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    return -slopes_H[:, None, None] * distance_LxL.astype(jnp.float32)


def causal_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    position: str = "learned",
    dtype: Any = None,
    **unused: Any,
) -> jax.Array:
    """Causal multi-head attention ``[..., L, H, K]`` with rotary or ALiBi positions; an ``attention_fn`` for Flax.

    ``position="rope"`` rotates queries and keys (``rotary_embedding``); ``"alibi"`` adds
    ``alibi_bias`` to the logits; other schemes attend plainly (their positions, if any, are in
    the input). Runs ``jax.nn.dot_product_attention`` (softmax in float32).

    Args:
      query, key, value: ``[B, L, H, K]`` (or ``[L, H, K]``).
      position: one of ``POSITIONS``.
      dtype: computation dtype (default: the query's).
      unused: the other arguments ``flax.linen.MultiHeadDotProductAttention`` passes (mask,
        dropout: causality is built in and the blocks have no dropout).

    Example:
      >>> x = jnp.ones((1, 3, 2, 4))
      >>> causal_attention(x, x, x, position="alibi").shape
      (1, 3, 2, 4)
    """
    check_position(position)
    unbatched = query.ndim == 3
    if unbatched:
        query, key, value = query[None], key[None], value[None]
    if dtype is not None:
        query, key, value = (jnp.asarray(a, dtype) for a in (query, key, value))
    bias = None
    if position == "rope":
        query, key = rotary_embedding(query), rotary_embedding(key)
    elif position == "alibi":
        bias = alibi_bias(query.shape[-2], query.shape[-3])[None]  # float32: the logits are
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, is_causal=True)
    return out[0] if unbatched else out


__all__: Sequence[str] = (
    "ATTENTION_POSITIONS",
    "POSITIONS",
    "TABLE_POSITIONS",
    "SinusoidalPositionEmbedding",
    "alibi_bias",
    "alibi_slopes",
    "causal_attention",
    "check_position",
    "rotary_embedding",
    "sinusoidal_table",
)
