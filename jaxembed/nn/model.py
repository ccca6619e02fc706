"""The smallest language model in which both embedding tables learn.

``EmbeddingLM`` embeds ids (token + learned position), optionally mixes the
positions with ``num_layers`` causal self-attention blocks, and predicts the
next token through the *tied* token table: ``logits = h @ E_tok.T``.

With ``num_layers=0`` (the default) there is no attention: each position sees
only its own token and position, so the token table learns which tokens follow
which but the positional table does not learn anything visible (every position
drifts towards one shared vector). One causal attention layer lets a position
read the tokens before it; only then does *where* a token sits matter, and the
positional table becomes banded: near positions similar, far ones not (the
README's "What the model learns" gives the measured figures).

Example:
  >>> import jax, jax.numpy as jnp
  >>> lm = EmbeddingLM(vocab_size=50257, max_length=16, features=32, num_layers=1, num_heads=4)
  >>> ids_BxL = jnp.zeros((2, 16), jnp.int32)
  >>> params = lm.init(jax.random.key(0), ids_BxL)
  >>> lm.apply(params, ids_BxL).shape
  (2, 16, 50257)
  >>> lm.apply(params, ids_BxL, method=EmbeddingLM.hidden).shape
  (2, 16, 32)
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxembed.errors import InvalidArgumentError
from jaxembed.nn.embeddings import InputEmbedding, check_ids, padded_size, require_size, require_stddev
from jaxembed.nn.losses import cross_entropy, tied_cross_entropy
from jaxembed.nn.positions import ATTENTION_POSITIONS, causal_attention, check_position, sinusoidal_table

#: Logical axis names of every parameter (map them to mesh axes with
#: ``nn.logical_to_mesh_sharding``). Tensor parallelism splits "vocab" and
#: "heads" over the ``model`` mesh axis; "embed", "kv" and "position" stay
#: replicated.
LOGICAL_AXES: dict[str, tuple[str, ...]] = {
    "token": ("vocab", "embed"),
    "position": ("position", "embed"),
    "qkv_kernel": ("embed", "heads", "kv"),
    "qkv_bias": ("heads", "kv"),
    "out_kernel": ("heads", "kv", "embed"),
    "out_bias": ("embed",),
    "norm": ("embed",),
}


def _check_heads(owner: str, features: int, num_heads: int) -> None:
    require_size(owner, "num_heads", num_heads)
    if features % num_heads:
        raise InvalidArgumentError(
            f"{owner}.num_heads={num_heads} is not allowed: it must divide features={features} "
            f"(head width = features // num_heads)."
        )


def _check_position(owner: str, position: str, features: int, num_heads: int) -> None:
    check_position(position, f"{owner}.position")
    if position == "rope" and (features // num_heads) % 2:
        raise InvalidArgumentError(
            f"{owner}.position='rope' needs an even head width: features={features} // num_heads={num_heads} "
            f"= {features // num_heads} (rotary turns pairs of channels)."
        )


def _layer_norm(dtype: Any, param_dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=1e-5,  # GPT-2's
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, LOGICAL_AXES["norm"]),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, LOGICAL_AXES["norm"]),
        name=name,
    )


class CausalSelfAttentionBlock(nn.Module):
    """One pre-LayerNorm causal self-attention block: ``h + Attn(LN(h))``.

    GPT-2's block without the MLP: position ``t`` attends to ``0 .. t`` only.
    ``position="rope"`` rotates queries and keys, ``"alibi"`` biases the
    logits by distance (``jaxembed.nn.positions.causal_attention``); any other
    scheme attends plainly. Flax's default initialisation: LeCun-normal kernels (variance 1/fan_in),
    zero biases, LayerNorm scale one. (GPT-2's N(0, 0.02^2) kernels learned
    slower on the tiny run: validation loss 6.07 against 5.93.)

    Attributes:
      features: width D of the residual stream.
      num_heads: attention heads H; must divide D (head width K = D // H).
      dtype: computation dtype; softmax always runs in float32.
      param_dtype: storage dtype of the parameters.
      position: a scheme of ``jaxembed.nn.positions.POSITIONS``; only
        ``"rope"`` (needs an even K) and ``"alibi"`` change the block.

    Raises:
      ValueError: ``features`` < 1, or ``num_heads`` < 1 or not dividing
        ``features`` (``TypeError`` if not an integer), an unknown
        ``position``, or rotary with an odd head width.

    Example:
      >>> block = CausalSelfAttentionBlock(features=8, num_heads=2)
      >>> h_BxLxD = jnp.ones((1, 5, 8))
      >>> block.apply(block.init(jax.random.key(0), h_BxLxD), h_BxLxD).shape
      (1, 5, 8)
    """

    features: int
    num_heads: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    position: str = "learned"

    def __post_init__(self):
        owner = type(self).__name__
        require_size(owner, "features", self.features)
        _check_heads(owner, self.features, self.num_heads)
        _check_position(owner, self.position, self.features, self.num_heads)
        super().__post_init__()

    @nn.compact
    def __call__(self, h_xLxD: jax.Array) -> jax.Array:
        """Adds causal self-attention of ``LN(h)`` to ``h``.

        Args:
          h_xLxD: residual stream ``[B, L, D]`` (or ``[L, D]``).

        Returns:
          ``h + Attn(LN(h))`` with the input's shape, in the compute dtype.
          Output at position ``t`` depends on inputs at ``0 .. t`` only.

        Raises:
          ValueError: the last axis is not ``features`` wide.
        """
        if h_xLxD.ndim < 2 or h_xLxD.shape[-1] != self.features:
            raise InvalidArgumentError(f"h must have shape [..., L, {self.features}], got shape {h_xLxD.shape}.")
        axes = LOGICAL_AXES
        kernel_init = nn.initializers.lecun_normal()
        attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(kernel_init, axes["qkv_kernel"]),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes["qkv_bias"]),
            out_kernel_init=nn.with_logical_partitioning(kernel_init, axes["out_kernel"]),
            out_bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes["out_bias"]),
            # Causal, with rotary or ALiBi; softmax in float32 (bf16 loses the small weights).
            attention_fn=functools.partial(causal_attention, position=self.position),
            deterministic=True,
            name="attention",
        )
        x_xLxD = _layer_norm(self.dtype, self.param_dtype, "norm")(h_xLxD)
        return h_xLxD + attention(x_xLxD)


class EmbeddingLM(nn.Module):
    """Input embeddings, optional causal self-attention, and a tied next-token head.

    ``num_layers=0``: ``logits = (E_tok[ids] + E_pos[:L]) @ E_tok.T``.
    ``num_layers=N``: ``h = E_tok[ids] + E_pos[:L]``, then ``N`` times
    ``h = h + Attn(LN(h))`` (``CausalSelfAttentionBlock``), then ``logits =
    h @ E_tok.T`` (or ``LN_f(h) @ E_tok.T`` with ``final_norm``).

    ``position`` says how the model knows where a token sits
    (``jaxembed.nn.positions``): ``"learned"`` ``E_pos`` (the default, the
    seed's), a fixed ``"sinusoidal"`` table in its place, ``"rope"`` or
    ``"alibi"`` inside attention (nothing added to the input), or ``"none"``.
    Every scheme but ``"learned"`` can run on sequences longer than
    ``max_length`` (the context it is trained on).

    Attributes:
      vocab_size: token ids ``0 .. vocab_size - 1``; columns of the logits.
      max_length: rows of the positional table (the context length).
      features: embedding width D.
      init_stddev: both tables start as N(0, init_stddev^2); small values
        give near-uniform first predictions (loss about ln(vocab_size)).
        Attention blocks use Flax's default initialisation.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay in
        ``param_dtype``.
      param_dtype: storage dtype of the parameters.
      vocab_multiple: the token table gets ``vocab_size`` rounded up to this
        multiple of rows, so it splits evenly over a ``model`` mesh axis
        (GPT-2's 50,257 -> 50,304 for 128). Padding rows are out of range
        (NaN when looked up, like any id >= vocab_size) and are cut from the
        logits, so the model is the same function.
      num_layers: causal self-attention blocks (0: none, the embeddings-only
        model with exactly its old parameters and numbers).
      num_heads: attention heads per block; must divide ``features``.
      final_norm: with ``num_layers > 0``, a final LayerNorm before the tied
        head (GPT-2's ln_f). Off by default: on the tiny run it raised the
        validation loss and blurred the positional table (README); consider
        it for deep stacks, where the pre-LN residual stream grows with depth.
      position: one of ``jaxembed.nn.positions.POSITIONS``.

    Raises:
      ValueError: a size attribute is out of range (sizes >= 1,
        ``num_layers >= 0``, ``num_heads`` dividing ``features``,
        ``init_stddev`` finite and >= 0); an unknown ``position``, rotary or
        ALiBi with ``num_layers=0``, rotary with an odd head width;
        ``TypeError`` for non-numbers.
    """

    vocab_size: int
    max_length: int
    features: int
    init_stddev: float = 0.02
    dtype: Any = None
    param_dtype: Any = jnp.float32
    vocab_multiple: int = 1
    num_layers: int = 0
    num_heads: int = 1
    final_norm: bool = False
    position: str = "learned"

    def __post_init__(self):
        owner = type(self).__name__
        for name in ("vocab_size", "max_length", "features", "vocab_multiple"):
            require_size(owner, name, getattr(self, name))
        require_size(owner, "num_layers", self.num_layers, minimum=0)
        _check_heads(owner, self.features, self.num_heads)
        require_stddev(owner, "init_stddev", self.init_stddev)
        _check_position(owner, self.position, self.features, self.num_heads)
        if self.position in ATTENTION_POSITIONS and self.num_layers == 0:
            raise InvalidArgumentError(
                f"{owner}.position={self.position!r} acts inside attention, but num_layers=0: "
                "set num_layers >= 1 or another position."
            )
        super().__post_init__()

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token table: ``vocab_size`` rounded up to ``vocab_multiple``."""
        return padded_size(self.vocab_size, self.vocab_multiple)

    def setup(self):
        init = nn.initializers.normal(self.init_stddev)
        self.embed = InputEmbedding(
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            features=self.features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            token_init=init,
            position_init=init,
            token_axes=LOGICAL_AXES["token"],
            position_axes=LOGICAL_AXES["position"],
            vocab_multiple=self.vocab_multiple,
            position_scheme=self.position if self.position in ("learned", "sinusoidal") else "none",
        )
        if self.num_layers:
            self.blocks = [
                CausalSelfAttentionBlock(
                    features=self.features,
                    num_heads=self.num_heads,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    position=self.position,
                    name=f"block_{i}",
                )
                for i in range(self.num_layers)
            ]
            if self.final_norm:
                self.norm_f = _layer_norm(self.dtype, self.param_dtype, "final_norm")

    def hidden(self, ids_BxL: jax.Array) -> jax.Array:
        """Final hidden states ``h_BxLxD``: what the tied head multiplies by ``E_tok.T``.

        ``logits == h @ table[:vocab_size].T`` with ``table`` from
        ``output_table`` (a tiled loss can use ``h`` and the padded table).

        Args:
          ids_BxL: integer token ids ``[B, L]`` (or ``[L]``), valid in
            ``[0, vocab_size)``; ``L <= max_length`` for ``position="learned"``.

        Returns:
          ``[B, L, D]`` (or ``[L, D]``) in the compute dtype. An out-of-range
          id gives a NaN row with ``num_layers=0``; with attention it makes
          its whole sequence NaN (masked attention still sums 0 * NaN).

        Raises:
          TypeError: ``ids_BxL`` is not an integer array.
          ValueError: ``ids_BxL`` has rank other than 1 or 2, or is longer
            than ``max_length`` with a learned positional table.
        """
        h_BxLxD = self.embed(ids_BxL)
        if self.num_layers:
            for block in self.blocks:
                h_BxLxD = block(h_BxLxD)
            if self.final_norm:
                h_BxLxD = self.norm_f(h_BxLxD)
        return h_BxLxD

    def output_table(self) -> jax.Array:
        """The tied head's table ``[padded_vocab_size, D]`` in the compute dtype (padding rows included)."""
        return self.embed.token.table()

    def __call__(self, ids_BxL: jax.Array) -> jax.Array:
        """Next-token logits.

        Args:
          ids_BxL: integer token ids ``[B, L]`` (or ``[L]``); see ``hidden``.

        Returns:
          ``[B, L, vocab_size]`` (or ``[L, vocab_size]``) logits in the
          compute dtype; position ``t`` depends on ids ``0 .. t`` only.

        Raises:
          TypeError, ValueError: as ``hidden``.
        """
        return self.embed.attend(self.hidden(ids_BxL))

    def loss(
        self,
        ids_BxL: jax.Array,
        targets_BxL: jax.Array,
        *,
        tile_tokens: int = 0,
        where_BxL: jax.Array | None = None,
    ) -> jax.Array:
        """Mean next-token cross-entropy (float32 nats per token) of ``targets_BxL``.

        Args:
          ids_BxL: integer token ids ``[B, L]``; see ``hidden``.
          targets_BxL: the next token at each position, ``[B, L]``; a target
            outside ``[0, vocab_size)`` at a kept position gives NaN.
          tile_tokens: ``0`` (or ``>= B * L``) computes the ``[B, L, V]``
            logits as ``__call__`` does; otherwise ``loss.tied_cross_entropy``
            scans tiles of this many tokens and never holds all the logits
            (same loss and gradients to float32 round-off).
          where_BxL: optional bool mask; the mean is over the True positions.

        Example:
          >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=2)
          >>> ids = jnp.array([[1, 2, 3, 4]])
          >>> params = lm.init(jax.random.key(0), ids)
          >>> dense = lm.apply(params, ids, ids, method=EmbeddingLM.loss)
          >>> tiled = lm.apply(params, ids, ids, tile_tokens=3, method=EmbeddingLM.loss)
          >>> bool(jnp.allclose(dense, tiled)), bool(jnp.allclose(dense, jnp.log(10), atol=0.01))
          (True, True)
        """
        tokens = int(np.prod(jnp.shape(targets_BxL)))
        if not tile_tokens or tokens <= tile_tokens:
            return cross_entropy(self(ids_BxL), targets_BxL, where=where_BxL)
        h_BxLxD = self.hidden(ids_BxL)
        return tied_cross_entropy(
            h_BxLxD.reshape(tokens, h_BxLxD.shape[-1]),
            self.output_table(),
            jnp.reshape(targets_BxL, (tokens,)),
            num_classes=self.vocab_size,
            tile_tokens=tile_tokens,
            where=None if where_BxL is None else jnp.reshape(where_BxL, (tokens,)),
            dtype=self.dtype,
        )

    def check(self, ids_BxL: jax.Array) -> None:
        """Raises for ids outside ``[0, vocab_size)`` or sequences longer than ``max_length``.

        Eager: ``ValueError`` naming the first bad id. Under ``jit``: a
        ``checkify`` check (wrap the caller with ``checkify.checkify``).
        Works on an unbound module (no params needed).

        Example:
          >>> EmbeddingLM(vocab_size=10, max_length=4, features=2, vocab_multiple=8).check(jnp.array([[3, 12]]))
          Traceback (most recent call last):
          ...
          jaxembed.errors.InvalidArgumentError: ids[0, 1]=12 is out of range; ids must lie in [0, 10).
        """
        check_ids(ids_BxL, self.vocab_size, "ids")
        if self.position == "learned":
            check_ids(jnp.arange(jnp.shape(ids_BxL)[-1]), self.max_length, "positions")


def embedding_tables(
    params: Any, vocab_size: int | None = None, position: str = "learned", max_length: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(token_VxD, position_LxD)`` of ``EmbeddingLM`` params as host numpy.

    ``vocab_size`` drops the padding rows of a padded table. ``position``
    (the model's scheme): ``"sinusoidal"`` gives its fixed table for
    ``max_length`` positions (computed, not trained); rotary, ALiBi and none
    have no table (``None``). Gathers shards from every process, so call it
    on all processes.

    Example:
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=2)
      >>> tok_VxD, pos_LxD = embedding_tables(lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
      >>> tok_VxD.shape, pos_LxD.shape
      ((10, 2), (4, 2))
    """
    from jax.experimental import multihost_utils

    embed = nn.unbox(params)["params"]["embed"]
    tables = [embed["token"]["embedding"]] + ([embed["position"]["embedding"]] if position == "learned" else [])
    if jax.process_count() > 1:
        tables = multihost_utils.process_allgather(tables, tiled=True)
    token_VxD = np.asarray(tables[0], dtype=np.float32)[:vocab_size]
    if position == "learned":
        return token_VxD, np.asarray(tables[1], dtype=np.float32)
    if position == "sinusoidal":
        if max_length is None:
            raise InvalidArgumentError("embedding_tables(position='sinusoidal') needs max_length (rows of the table).")
        return token_VxD, np.asarray(sinusoidal_table(max_length, token_VxD.shape[1]), np.float32)
    check_position(position)
    return token_VxD, None


def make_model(model_config: ml_collections.ConfigDict, *, vocab_size: int, max_length: int) -> EmbeddingLM:
    """The ``EmbeddingLM`` a config's ``model`` section describes (nanodo's ``model_factory``).

    Args:
      model_config: ``config.model`` (see ``jaxembed.config.base_config``).
      vocab_size: rows of the token table before padding (the tokenizer's, or
        ``K`` with ``model.active_vocab``).
      max_length: the context length (``config.data.max_length``).

    Example:
      >>> from jaxembed.config import named_config
      >>> make_model(named_config("tiny").model, vocab_size=50257, max_length=16).padded_vocab_size
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
        num_layers=model_config.num_layers,
        num_heads=model_config.num_heads,
        position=model_config.position,
    )


__all__ = [
    "CausalSelfAttentionBlock",
    "EmbeddingLM",
    "embedding_tables",
    "make_model",
]
