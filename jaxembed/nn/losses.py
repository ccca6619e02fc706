"""Next-token cross-entropy, dense or tiled through a tied embedding table.

``cross_entropy`` scores given logits. ``tied_cross_entropy`` scores
``h @ table.T`` without ever holding the ``[N, V]`` logits: a ``lax.scan``
over tiles of tokens keeps only each token's loss, and when gradients are
asked for (a ``jax.custom_vjp``) the same scan turns each tile's logits into
their gradient (softmax - onehot) and accumulates ``d_h`` and ``d_table``
at once, so no logits are computed twice (the ideas of MaxText's vocabulary
tiling, "Cut Your Losses", Wijmans et al. 2024, and Liger-Kernel's fused
linear cross-entropy, Hsu et al. 2024).

Conventions shared by both functions:

* Targets outside ``[0, num_classes)`` (e.g. -1, or PyTorch's -100 padding)
  give a NaN loss rather than silently scoring some class.
* ``where`` (bool, the targets' shape) excludes the positions where it is
  False; the loss is the mean over the True positions, and masked-out targets
  may hold anything. If every position is masked out the loss is NaN (the mean
  of nothing, as ``numpy.mean([])`` and PyTorch's ``ignore_index`` give).

Example:
  >>> import jax, jax.numpy as jnp
  >>> h_NxD = jnp.ones((5, 4)); table_VxD = jnp.zeros((8, 4))
  >>> float(tied_cross_entropy(h_NxD, table_VxD, jnp.arange(5), num_classes=6, tile_tokens=2))  # ln 6
  1.7917594909667969
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "ACCELERATOR_TILE_TOKENS",
    "CPU_TILE_BYTES",
    "LOGITS_LAYOUTS",
    "auto_logits_layout",
    "auto_tile_tokens",
    "cross_entropy",
    "tied_cross_entropy",
]

#: On CPU a tile's float32 logits fill at most this many bytes, unless the table is wide (see
#: ``auto_tile_tokens``): small tiles stay in the caches, and a step's buffers stay under glibc's
#: 32 MiB mmap ceiling, above which every step page-faults them in afresh (the dense loss of the
#: tiny config spent 78 ms of a 167 ms step in the kernel: benchmarks/README.md, "Main job").
CPU_TILE_BYTES = 8 << 20
#: On GPUs and TPUs: batches of at most this many tokens run the dense program (fastest there).
ACCELERATOR_TILE_TOKENS = 2048


def auto_tile_tokens(padded_vocab_size: int, backend: str, *, features: int) -> int:
    """Tokens per loss tile when ``model.loss_tile_tokens`` is None (the default).

    On CPU each tile adds its ``[V, D]`` gradient to the table's, one pass over ``V * D`` floats,
    while its logits are ``V * T``: for tables wider than 32 a tile takes ``2 * D`` tokens (rounded up
    to a power of two), so that pass costs no more than the logits; narrower ones take the most
    tokens whose logits fit ``CPU_TILE_BYTES``. Measured on 2 cores with GPT-2's vocabulary, one
    attention layer, 1,024 tokens a step, tiles of 32 to 512 (benchmarks/README.md, "Loss tiles"):
    the fastest were 32 tokens at D = 32, 128 at D = 64, 256 at D = 128 and 512 at D = 256.

    Args:
      padded_vocab_size: rows of the tied table, ``V`` (padded).
      backend: ``jax.default_backend()`` (``"cpu"``, ``"gpu"``, ``"tpu"``).
      features: the table's width ``D``.

    Returns:
      On CPU the larger of ``next_power_of_two(2 * D)`` (``D > 32`` only) and the largest power of two
      ``T >= 8`` with ``T * V * 4 <= CPU_TILE_BYTES``; elsewhere ``ACCELERATOR_TILE_TOKENS``.

    Example:
      >>> auto_tile_tokens(50304, "cpu", features=32), auto_tile_tokens(50304, "cpu", features=256)
      (32, 512)
      >>> auto_tile_tokens(4480, "cpu", features=32), auto_tile_tokens(50304, "gpu", features=768)
      (256, 2048)
    """
    if backend != "cpu":
        return ACCELERATOR_TILE_TOKENS
    fit = max(1, CPU_TILE_BYTES // (4 * int(padded_vocab_size)))
    by_bytes = max(8, 1 << (fit.bit_length() - 1))
    if features <= 32:
        return by_bytes
    return max(by_bytes, 1 << (2 * int(features) - 1).bit_length())


#: ``tied_cross_entropy``'s ``logits_layout`` values: vocabulary-major ``logits_VxN`` or token-major ``logits_NxV``.
LOGITS_LAYOUTS = ("VxN", "NxV")


def auto_logits_layout(backend: str) -> str:
    """The faster layout of the tied logits on ``backend``: ``"VxN"`` on CPU, ``"NxV"`` elsewhere.

    XLA:CPU reduces a row-major ``[N, V]`` array along its rows (the logsumexp over V for each
    token) several times slower than over its columns, where each step of the reduction is one
    vector operation across tokens: the tiny config's train step (64-token tiles of 50,304 logits)
    ran 1.5x faster with ``logits_VxN`` (benchmarks/README.md, "Main job"). GPUs and TPUs keep the
    conventional ``[N, V]`` programs, whose speed there has been measured.

    Example:
      >>> auto_logits_layout("cpu"), auto_logits_layout("gpu")
      ('VxN', 'NxV')
    """
    return "VxN" if backend == "cpu" else "NxV"


def _check_targets(targets: jax.Array, shape: tuple[int, ...], name: str = "targets") -> None:
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise InvalidTypeError(f"{name} must be an integer array, got dtype {jnp.result_type(targets)}")
    if tuple(jnp.shape(targets)) != tuple(shape):
        raise InvalidArgumentError(f"{name} must have shape {tuple(shape)}, got {tuple(jnp.shape(targets))}")


def _check_where(where: jax.Array | None, shape: tuple[int, ...]) -> None:
    if where is None:
        return
    if jnp.result_type(where) != jnp.bool_:
        raise InvalidTypeError(f"where must be a bool array, got dtype {jnp.result_type(where)}")
    if tuple(jnp.shape(where)) != tuple(shape):
        raise InvalidArgumentError(f"where must have the targets' shape {tuple(shape)}, got {tuple(jnp.shape(where))}")


def _lse_and_target_logit(
    logits: jax.Array, targets_N: jax.Array, num_classes: int, class_axis: int = -1
) -> tuple[jax.Array, jax.Array]:
    """Per-token logsumexp over the first ``num_classes`` classes and the target's logit (NaN if out of range).

    ``logits`` is ``[..., V]`` (``class_axis=-1``) or ``logits_VxN`` (``class_axis=0``). The target logit is
    a masked sum rather than a gather so that a vocabulary-sharded array needs only a reduction across
    shards, never an all-gather.
    """
    axis = class_axis % logits.ndim
    shape = [1] * logits.ndim
    shape[axis] = logits.shape[axis]
    classes = jnp.arange(logits.shape[axis]).reshape(shape)
    if num_classes < logits.shape[axis]:
        logits = jnp.where(classes < num_classes, logits, -jnp.inf)
    lse_N = jax.nn.logsumexp(logits, axis=axis)
    picked_N = jnp.sum(jnp.where(classes == jnp.expand_dims(targets_N, axis), logits, 0.0), axis=axis)
    valid_N = (targets_N >= 0) & (targets_N < num_classes)
    return lse_N, jnp.where(valid_N, picked_N, jnp.nan)


def _logsumexp(logits: jax.Array, num_classes: int, class_axis: int) -> jax.Array:
    """Logsumexp over the first ``num_classes`` entries of ``class_axis`` (the rest are sharding padding).

    Vocabulary-major logits (``class_axis=0``, the CPU program) drop the padding rows with a slice, a
    prefix of the array that costs less than a masked copy of it; token-major ones (accelerators) mask
    them, which needs no data moved between vocabulary shards.
    """
    axis = class_axis % logits.ndim
    if num_classes < logits.shape[axis]:
        if axis == 0:
            logits = jax.lax.slice_in_dim(logits, 0, num_classes, axis=0)
        else:
            classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, axis)
            logits = jnp.where(classes < num_classes, logits, -jnp.inf)
    return jax.nn.logsumexp(logits, axis=axis)


def _target_logits(h_TxD: jax.Array, table_c: jax.Array, targets_T: jax.Array, num_classes: int) -> jax.Array:
    """``(h @ table.T)[t, targets[t]]`` in float32 (NaN for a target outside ``[0, num_classes)``).

    One row of the table per token and a ``D``-long dot, rather than a masked sum over all ``V`` logits
    (a whole extra pass over the tile on CPU); a vocabulary-sharded table is gathered row by row.
    """
    rows_TxD = table_c.at[jnp.clip(targets_T, 0, num_classes - 1)].get(mode="clip")
    picked_T = jnp.einsum("td,td->t", h_TxD.astype(table_c.dtype), rows_TxD, preferred_element_type=jnp.float32)
    return jnp.where((targets_T >= 0) & (targets_T < num_classes), picked_T, jnp.nan)


def _masked_mean(losses_N: jax.Array, where_N: jax.Array | None) -> jax.Array:
    if where_N is None:
        return jnp.mean(losses_N)
    # Select, not multiply: a masked-out NaN (out-of-range padding target) must not leak.
    return jnp.sum(jnp.where(where_N, losses_N, 0.0)) / jnp.sum(where_N, dtype=jnp.float32)


def cross_entropy(logits: jax.Array, targets: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
    """Mean next-token cross-entropy in float32 (nats per token).

    Args:
      logits: ``[..., V]`` (e.g. ``logits_NxV`` or ``logits_BxLxV``), any float dtype; cast to float32.
      targets: integer class ids, shape ``logits.shape[:-1]``. Ids outside ``[0, V)`` at kept positions make
        the loss NaN.
      where: optional bool mask, shape of ``targets``; False positions are excluded and may hold any target.

    Returns:
      Scalar float32: the mean over kept positions of ``logsumexp(logits) - logits[target]``; NaN if no
      position is kept.

    Raises:
      TypeError: ``targets`` not integer or ``where`` not bool.
      ValueError: shapes disagree.

    Example:
      >>> import jax.numpy as jnp
      >>> float(cross_entropy(jnp.zeros((1, 2, 4)), jnp.array([[0, 3]])))  # ln 4
      1.3862943649291992
      >>> float(cross_entropy(jnp.zeros((2, 4)), jnp.array([-1, 3])))
      nan
      >>> float(cross_entropy(jnp.zeros((2, 4)), jnp.array([-100, 3]), where=jnp.array([False, True])))
      1.3862943649291992
    """
    if jnp.ndim(logits) < 1:
        raise InvalidArgumentError(f"logits must have a class axis, got shape {jnp.shape(logits)}")
    _check_targets(targets, jnp.shape(logits)[:-1])
    _check_where(where, jnp.shape(logits)[:-1])
    lse, picked = _lse_and_target_logit(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.shape(logits)[-1])
    return _masked_mean(lse - picked, where)


# --- Tiled ------------------------------------------------------------------


def _tile_logits(h_TxD: jax.Array, table_VxD: jax.Array, dtype: Any, vocab_major: bool) -> jax.Array:
    """``logits_VxT`` if ``vocab_major`` else ``logits_TxV``, accumulated and returned in float32."""
    # Operands rounded to `dtype`, product accumulated and returned in float32. `EmbeddingLM.attend` asks
    # for a bf16 product that the loss widens; whether XLA really rounds those logits depends on fusion
    # (jitted on CPU it drops the round trip unless the padding slice sits in between; see test_loss.py).
    # Asking for float32 is the accurate choice and gives the same numbers jitted or not.
    h_c, table_c = h_TxD.astype(dtype), table_VxD.astype(dtype)
    if vocab_major:
        return jnp.dot(table_c, h_c.T, preferred_element_type=jnp.float32)
    return jnp.dot(h_c, table_c.T, preferred_element_type=jnp.float32)


def _to_tiles(x_N: jax.Array, num_tiles: int) -> jax.Array:
    # Token n goes to tile n % num_tiles: a batch sharded over `data` along N stays sharded along each
    # tile's token axis, so every scan step keeps every data shard busy and moves no activations.
    tile = x_N.shape[0] // num_tiles
    return jnp.swapaxes(x_N.reshape((tile, num_tiles) + x_N.shape[1:]), 0, 1)


def _from_tiles(x_KxT: jax.Array) -> jax.Array:
    x = jnp.swapaxes(x_KxT, 0, 1)
    return x.reshape((-1,) + x.shape[2:])


def _tile_scan(h_NxD, table_VxD, targets_N, where_N, num_classes, num_tiles, dtype, vocab_major, grad_scale):
    """Scans the token tiles for the sum of the kept tokens' losses; with ``grad_scale``, also its gradients.

    The gradients come from the same logits as the loss (each tile holds its tokens' full rows of ``V``
    logits, so their softmax is exact): one ``N x D x V`` product less than recomputing the logits in a
    backward pass (Liger-Kernel's fused linear cross-entropy). ``d loss / d logits[i, v] = (softmax[i, v]
    - onehot[i, v]) * grad_scale`` at kept tokens, zero elsewhere; as in the dense path that float32 logit
    gradient is rounded to ``dtype`` before its two products, which accumulate in float32.
    """
    rows_Vx1 = jnp.arange(table_VxD.shape[0])[:, None]
    table_c = table_VxD.astype(dtype)
    with_grads = grad_scale is not None

    def tile_body(d_table_VxD, tile):
        h_TxD, targets_T, where_T = tile
        logits = _tile_logits(h_TxD, table_VxD, dtype, vocab_major)
        lse_T = _logsumexp(logits, num_classes, class_axis=0 if vocab_major else -1)
        losses_T = jnp.where(where_T, lse_T - _target_logits(h_TxD, table_c, targets_T, num_classes), 0.0)
        if not with_grads:
            return d_table_VxD, (losses_T, None)
        logits_VxT = logits if vocab_major else logits.T  # XLA folds the transposes into the products
        probs_VxT = jnp.where(rows_Vx1 < num_classes, jnp.exp(logits_VxT - lse_T[None, :]), 0.0)
        onehot_VxT = (rows_Vx1 == targets_T[None, :]).astype(jnp.float32)
        coef_T = jnp.where(where_T, grad_scale, 0.0)
        d_logits_VxT = ((probs_VxT - onehot_VxT) * coef_T[None, :]).astype(dtype)
        d_h_TxD = jnp.dot(d_logits_VxT.T, table_c, preferred_element_type=jnp.float32)
        d_table_VxD = d_table_VxD + jnp.dot(d_logits_VxT, h_TxD.astype(dtype), preferred_element_type=jnp.float32)
        return d_table_VxD, (losses_T, d_h_TxD)

    tiles = tuple(_to_tiles(x, num_tiles) for x in (h_NxD, targets_N, where_N))
    d_table = jnp.zeros(table_VxD.shape, jnp.float32) if with_grads else None
    d_table_VxD, (losses_KxT, d_h_KxTxD) = jax.lax.scan(tile_body, d_table, tiles)
    return jnp.sum(losses_KxT), (None if d_h_KxTxD is None else _from_tiles(d_h_KxTxD)), d_table_VxD


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _tiled_mean(h_NxD, table_VxD, targets_N, where_N, num_classes, num_tiles, dtype, vocab_major):
    """Mean over kept tokens of the token's cross-entropy (NaN if a kept target is out of range or none is kept).

    Evaluated alone (no gradient asked for), it scans the tiles for the losses only.
    """
    args = (h_NxD, table_VxD, targets_N, where_N, num_classes, num_tiles, dtype, vocab_major)
    return _tile_scan(*args, grad_scale=None)[0] / jnp.sum(where_N, dtype=jnp.float32)


def _tiled_mean_fwd(h_NxD, table_VxD, targets_N, where_N, num_classes, num_tiles, dtype, vocab_major):
    count = jnp.sum(where_N, dtype=jnp.float32)
    # 1 / count is what the mean's cotangent 1 becomes at each kept token (none kept: no gradient).
    scale = jnp.where(count > 0, 1.0 / count, 0.0)
    args = (h_NxD, table_VxD, targets_N, where_N, num_classes, num_tiles, dtype, vocab_major)
    total, d_h_NxD, d_table_VxD = _tile_scan(*args, grad_scale=scale)
    return total / count, (d_h_NxD.astype(h_NxD.dtype), d_table_VxD.astype(table_VxD.dtype))


def _tiled_mean_bwd(num_classes, num_tiles, dtype, vocab_major, residuals, g):
    d_h_NxD, d_table_VxD = residuals
    # The usual cotangent is 1 (the loss is what is differentiated): then the gradients pass unchanged.
    return (g * d_h_NxD).astype(d_h_NxD.dtype), (g * d_table_VxD).astype(d_table_VxD.dtype), None, None


_tiled_mean.defvjp(_tiled_mean_fwd, _tiled_mean_bwd)


def tied_cross_entropy(
    h: jax.Array,
    table: jax.Array,
    targets: jax.Array,
    *,
    num_classes: int,
    tile_tokens: int | None,
    where: jax.Array | None = None,
    dtype: Any = None,
    logits_layout: str | None = None,
) -> jax.Array:
    """``cross_entropy((h @ table.T)[:, :num_classes], targets, where=where)`` without the ``[N, V]`` logits.

    With ``0 < tile_tokens < N`` the tokens are split into ``ceil(N / tile_tokens)`` tiles of at most
    ``tile_tokens`` each (padded with masked tokens; at most one padding token per tile); one scan over
    the tiles computes the loss and, under ``jax.grad``, the gradients from the same logits, so
    temporaries scale with ``tile_tokens * V``, not ``N * V``, for no extra product (the gradients,
    ``[N, D]`` and ``[V, D]``, are kept for the backward pass instead of ``h`` and ``table``). With
    ``N <= tile_tokens`` the logits fit the budget and the dense path is used.
    Rows ``num_classes ..`` of the table (sharding padding) are excluded from the softmax and get zero
    gradient. Works under ``jax.jit`` with the table sharded along V and ``h`` along N: XLA's SPMD
    partitioner combines the per-shard max/sum of the logsumexp.

    Args:
      h: ``h_NxD`` final hidden states (e.g. ``h_BxLxD.reshape(-1, D)``).
      table: ``table_VxD`` tied token table, ``V >= num_classes`` rows.
      targets: ``targets_N`` integer ids; out of ``[0, num_classes)`` at a kept position -> NaN loss.
      num_classes: classes in the softmax (the unpadded vocabulary size).
      tile_tokens: most tokens per tile; 0, None or >= N computes the dense logits instead.
      where: optional bool ``[N]``; False positions are excluded (their targets may be anything).
      dtype: operand dtype of the logits product (e.g. ``jnp.bfloat16``, the model's computation dtype);
        None: ``h`` and ``table`` promoted. Logits, softmax and gradient accumulation are float32; the
        logit gradient is rounded to ``dtype`` before its two products, as in the dense backward.
      logits_layout: ``"VxN"`` computes ``table @ h.T`` and reduces over its rows, ``"NxV"`` computes
        ``h @ table.T`` and reduces along each row; same numbers. None: ``auto_logits_layout`` of
        ``jax.default_backend()`` (``"VxN"`` on CPU, where it is faster).

    Returns:
      Scalar float32 mean cross-entropy over kept tokens (nats); NaN if none is kept.

    Raises:
      TypeError: ``targets`` not integer, ``where`` not bool, or ``tile_tokens``/``num_classes`` not int.
      ValueError: bad shapes, ``num_classes`` not in ``[1, V]``, ``tile_tokens`` negative, or
        ``logits_layout`` not one of ``LOGITS_LAYOUTS``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> h_NxD, table_VxD = jax.random.normal(jax.random.key(0), (7, 4)), jax.random.normal(jax.random.key(1), (8, 4))
      >>> t_N = jnp.array([0, 1, 2, 3, 4, 5, 0])
      >>> dense = tied_cross_entropy(h_NxD, table_VxD, t_N, num_classes=6, tile_tokens=0)
      >>> tiled = tied_cross_entropy(h_NxD, table_VxD, t_N, num_classes=6, tile_tokens=3)
      >>> bool(jnp.allclose(dense, tiled))
      True
    """
    if jnp.ndim(h) != 2 or jnp.ndim(table) != 2:
        raise InvalidArgumentError(
            f"h and table must be 2-D (h_NxD, table_VxD), got shapes {jnp.shape(h)} and {jnp.shape(table)}"
        )
    (n, d), (v, d_table) = jnp.shape(h), jnp.shape(table)
    if d != d_table:
        raise InvalidArgumentError(f"h has width {d} but table has width {d_table}")
    for name, value in (("num_classes", num_classes), ("tile_tokens", tile_tokens)):
        if value is not None and (not isinstance(value, int | np.integer) or isinstance(value, bool)):
            raise InvalidTypeError(f"{name} must be an int, got {value!r}")
    if num_classes is None or not 1 <= num_classes <= v:
        raise InvalidArgumentError(f"num_classes must be in [1, {v}] (rows of table), got {num_classes}")
    if tile_tokens is not None and tile_tokens < 0:
        raise InvalidArgumentError(f"tile_tokens must be >= 0 (0 or None: dense), got {tile_tokens}")
    if logits_layout is None:
        logits_layout = auto_logits_layout(jax.default_backend())
    if logits_layout not in LOGITS_LAYOUTS:
        raise InvalidArgumentError(f"logits_layout={logits_layout!r} is not allowed; use one of {LOGITS_LAYOUTS}")
    vocab_major = logits_layout == "VxN"
    _check_targets(targets, (n,))
    _check_where(where, (n,))
    dtype = jnp.promote_types(jnp.result_type(h), jnp.result_type(table)) if dtype is None else jnp.dtype(dtype)

    # One tile would hold all N x V logits anyway: the dense path, which skips the scan, is then as
    # small and faster. So tile_tokens is a memory budget that small batches never pay for in time.
    if not tile_tokens or n <= tile_tokens:
        if not vocab_major:
            return cross_entropy(_tile_logits(h, table, dtype, False)[:, :num_classes], targets, where=where)
        logits_VxN = _tile_logits(h, table, dtype, True)
        lse_N, picked_N = _lse_and_target_logit(logits_VxN, jnp.asarray(targets), num_classes, class_axis=0)
        return _masked_mean(lse_N - picked_N, where)

    num_tiles = -(-n // tile_tokens)
    padded = -(-n // num_tiles) * num_tiles
    where_N = jnp.ones((n,), jnp.bool_) if where is None else jnp.asarray(where)
    pad = padded - n
    h_NxD = jnp.pad(h, ((0, pad), (0, 0)))
    targets_N = jnp.pad(jnp.asarray(targets), (0, pad))
    where_N = jnp.pad(where_N, (0, pad))
    return _tiled_mean(h_NxD, table, targets_N, where_N, int(num_classes), num_tiles, dtype, vocab_major)
