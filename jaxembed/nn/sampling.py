"""Text from a language model: autoregressive sampling, one compiled step per token.

``generate`` extends a prompt one token at a time. Each step applies the model
to a fixed-shape window ``[1, L]`` (``L = model.max_length``) holding the
sequence so far, followed by padding id 0, takes the logits at the last real
token (the model is causal, so the padding after it changes nothing there),
divides them by the temperature, keeps the ``top_k`` largest, and samples one
token with ``jax.random.categorical``. The key of step ``i`` is
``fold_in(key(seed), i)``, so a seed gives the same tokens every time. Once the
sequence fills the window it slides: the window keeps the last ``L`` tokens,
so positions are counted from the window's first token, as in training. The
window's shape never changes, so the step compiles once per model and
``top_k`` (``SamplingStep.traces`` counts it), whatever the prompt or the
number of tokens.

The model is a black box, ``model.apply(params, ids_1xL)``; any causal
``[B, L] -> [B, L, V]`` module with a ``max_length`` and a ``vocab_size`` works.
There is no key/value cache: each token costs one forward pass over ``L``
positions, which is what a teaching model of context 16 to 1,024 can afford.

``sample_text`` is the same with text in and out: it encodes the prompt,
maps it into a run's active vocabulary (``model.active_vocab``) if it has one,
and decodes the prompt and its continuation.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxembed.nn.model import EmbeddingLM
  >>> lm = EmbeddingLM(vocab_size=50, max_length=8, features=16, num_layers=1, num_heads=2)
  >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  >>> ids = generate(lm, params, [3, 1, 4], 12, temperature=0.8, top_k=5, seed=0)
  >>> ids.shape, ids.dtype
  ((12,), dtype('int32'))
  >>> bool((ids == generate(lm, params, [3, 1, 4], 12, temperature=0.8, top_k=5, seed=0)).all())
  True
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import InvalidArgumentError, check_int

#: Settings for a readable sample of a small model: ``jaxembed sample``'s defaults and the run
#: report's. Top-k 40 follows the GPT-2 paper's samples (Radford et al. 2019, section 3.7); a
#: temperature below 1 trims the long tail a few hundred steps leave in the softmax.
SUGGESTED_TEMPERATURE, SUGGESTED_TOP_K = 0.8, 40

#: What the error messages call each argument; the CLI passes its flags instead.
ARGUMENT_NAMES: Mapping[str, str] = {
    "prompt": "prompt",
    "num_tokens": "num_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "seed": "seed",
    "max_length": "max_length",
}


def _names(names: Mapping[str, str] | None) -> dict[str, str]:
    return {**ARGUMENT_NAMES, **(names or {})}


def check_sampling_args(
    *,
    num_tokens: Any = 1,
    temperature: Any = 1.0,
    top_k: Any = None,
    seed: Any = 0,
    vocab_size: int | None = None,
    names: Mapping[str, str] | None = None,
) -> None:
    """Raises for sampling settings out of range, naming the argument, its value and what is allowed.

    Args:
      num_tokens: tokens to generate, an integer >= 1.
      temperature: a finite number > 0 (logits are divided by it).
      top_k: ``None`` (the whole vocabulary) or an integer in ``[1, vocab_size]``.
      seed: an integer in ``[0, 2**32 - 1]``.
      vocab_size: the model's vocabulary; ``None`` checks only ``top_k >= 1``.
      names: what the messages call each argument (keys of ``ARGUMENT_NAMES``).

    Raises:
      InvalidArgumentError: the first setting out of range.

    Example:
      >>> check_sampling_args(temperature=0.0, names={"temperature": "--temperature"})
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: --temperature=0.0 is not allowed: it must be a finite number > 0.
    """
    n = _names(names)
    check_int(num_tokens, n["num_tokens"], minimum=1)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise InvalidArgumentError(
            f"{n['temperature']}={temperature!r} is not allowed: it must be a finite number > 0."
        )
    if top_k is not None:
        check_int(top_k, n["top_k"], minimum=1, maximum=vocab_size)
    check_int(seed, n["seed"], minimum=0, maximum=2**32 - 1)


def check_prompt_ids(
    prompt_ids: Sequence[int] | np.ndarray, vocab_size: int, max_length: int, names: Mapping[str, str] | None = None
) -> np.ndarray:
    """The prompt as int32 ``[P]``, checked: ``1 <= P <= max_length`` and ids in ``[0, vocab_size)``.

    Raises:
      InvalidArgumentError: the prompt is empty, longer than the context, or
        holds an id out of range (the message says which and what is allowed).

    Example:
      >>> check_prompt_ids([1, 2, 3], vocab_size=10, max_length=2)
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: prompt is 3 tokens; the model's context is 2 (max_length): give at most 2.
    """
    n = _names(names)
    ids = np.asarray(prompt_ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise InvalidArgumentError(f"{n['prompt']} must be a 1-D sequence of integer token ids, got {ids!r}.")
    if ids.size == 0:
        raise InvalidArgumentError(f"{n['prompt']} is empty: it must hold at least one token.")
    if ids.size > max_length:
        raise InvalidArgumentError(
            f"{n['prompt']} is {ids.size} tokens; the model's context is {max_length} ({n['max_length']}): "
            f"give at most {max_length}."
        )
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if bad.size:
        raise InvalidArgumentError(
            f"{n['prompt']}[{bad[0]}]={int(ids[bad[0]])} is out of range; ids must lie in [0, {vocab_size})."
        )
    return ids.astype(np.int32)


class SamplingStep:
    """One jit-compiled sampling step of ``model``: sample the next token, put it in the window.

    Call it as ``step(params, window_1xL, length, key, index, temperature)``:

    - ``window_1xL``: int32 ``[1, L]``; its first ``length`` ids are the
      sequence (the last ``L`` tokens of it), the rest padding.
    - ``length``: int32 scalar in ``[1, L]``.
    - ``key``: the sampling key of the whole sequence (``jax.random.key(seed)``);
      step ``index`` (int32 scalar) samples with ``fold_in(key, index)``.
    - ``temperature``: float32 scalar > 0.

    It returns ``(token, window_1xL, length)``: the token sampled from the
    logits at ``length - 1``, and the window with it appended (``length + 1``),
    or, when the window was full, shifted left by one with it last (``L``).

    ``traces`` counts how often JAX traced (and so compiled) the step: it stays
    1 for any number of calls with the same shapes.

    Attributes:
      model: the language model; ``model.apply(params, ids_1xL)`` gives ``[1, L, V]`` logits.
      top_k: keep only the ``top_k`` largest logits (``None``: all).
      traces: how many times the step was traced.

    Example:
      >>> from jaxembed.nn.model import EmbeddingLM
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=4)
      >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      >>> step = SamplingStep(lm, top_k=3)
      >>> window, length = jnp.array([[5, 6, 0, 0]]), jnp.int32(2)
      >>> for i in range(5):
      ...     token, window, length = step(params, window, length, jax.random.key(0), jnp.int32(i), jnp.float32(1.0))
      >>> window.shape, int(length), step.traces
      ((1, 4), 4, 1)
    """

    def __init__(self, model: Any, *, top_k: int | None = None):
        self.model = model
        self.top_k = top_k
        self.traces = 0
        self._jitted: dict[Any, Any] = {}  # params' mesh (or None) -> the jitted step

    def _jitted_for(self, params: Any) -> Any:
        # The window and length it returns go back in as the next call's inputs. Pinned to one
        # sharding (replicated over the params' mesh), every call has the same input shardings,
        # so the step compiles once; left to XLA, the outputs come back sharded differently from
        # the first call's host arrays and the second call compiles the step again.
        mesh = params_mesh(params)
        if mesh not in self._jitted:
            replicated = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            self._jitted[mesh] = jax.jit(self._step, out_shardings=replicated)
        return self._jitted[mesh]

    def _step(
        self,
        params: Any,
        window_1xL: jax.Array,
        length: jax.Array,
        key: jax.Array,
        index: jax.Array,
        temperature: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        self.traces += 1  # a Python side effect: it runs when JAX traces, not when the compiled step runs
        L = window_1xL.shape[1]
        logits_1xLxV = self.model.apply(params, window_1xL)
        logits_V = jax.lax.dynamic_index_in_dim(logits_1xLxV[0], length - 1, keepdims=False)
        logits_V = logits_V.astype(jnp.float32) / temperature
        step_key = jax.random.fold_in(key, index)
        if self.top_k is None:
            token = jax.random.categorical(step_key, logits_V)
        else:
            top_logits_K, top_ids_K = jax.lax.top_k(logits_V, self.top_k)
            token = top_ids_K[jax.random.categorical(step_key, top_logits_K)]
        token = token.astype(window_1xL.dtype)
        appended = jax.lax.dynamic_update_index_in_dim(window_1xL, token[None], jnp.minimum(length, L - 1), axis=1)
        shifted = jnp.roll(window_1xL, -1, axis=1).at[0, L - 1].set(token)
        window_1xL = jnp.where(length < L, appended, shifted)
        return token, window_1xL, jnp.minimum(length + 1, L)

    def __call__(
        self,
        params: Any,
        window_1xL: jax.Array,
        length: jax.Array,
        key: jax.Array,
        index: jax.Array,
        temperature: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self._jitted_for(params)(params, window_1xL, length, key, index, temperature)


def params_mesh(params: Any) -> jax.sharding.Mesh | None:
    """The mesh ``params`` are laid out on (their first ``NamedSharding`` leaf's), or ``None``.

    Example:
      >>> params_mesh({"w": jnp.zeros(3)}) is None
      True
    """
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return sharding.mesh
    return None


@functools.lru_cache(maxsize=8)
def _cached_step(model: Any, top_k: int | None) -> SamplingStep:
    # Flax modules hash by their attributes: calls with an equal model share one compiled step.
    return SamplingStep(model, top_k=top_k)


def generate(
    model: Any,
    params: Any,
    prompt_ids: Sequence[int] | np.ndarray,
    num_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    step: SamplingStep | None = None,
    names: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Samples ``num_tokens`` tokens after ``prompt_ids``: the continuation only, int32 ``[num_tokens]``.

    Past the model's context (``model.max_length``) the window slides: each
    token is sampled from the last ``max_length`` tokens. ``top_k=1`` is greedy
    decoding (the argmax at every step). The same arguments give the same
    tokens on the same backend.

    Args:
      model: the language model (e.g. ``EmbeddingLM``), used only through
        ``model.apply(params, ids_1xL)`` and its ``max_length`` and ``vocab_size``.
      params: its parameters (boxed or not).
      prompt_ids: ``[P]`` model ids, ``1 <= P <= model.max_length``.
      num_tokens: how many tokens to sample, >= 1.
      temperature: logits are divided by it before sampling; finite, > 0.
      top_k: sample among the ``top_k`` most likely tokens only (``None``: all).
      seed: the sampling seed, in ``[0, 2**32 - 1]``.
      step: a ``SamplingStep`` of this model and ``top_k`` to reuse (default:
        one shared by the calls with an equal model and ``top_k``).
      names: what error messages call the arguments (see ``ARGUMENT_NAMES``).

    Returns:
      int32 numpy ``[num_tokens]``: the sampled ids, in the model's vocabulary.

    Raises:
      InvalidArgumentError: a setting out of range, an empty prompt, a prompt
        longer than the context or an id outside ``[0, vocab_size)``; the
        message names the argument and what is allowed.

    Example:
      >>> from jaxembed.nn.model import EmbeddingLM
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=4)
      >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      >>> generate(lm, params, [1, 2], 6, top_k=1).shape  # greedy, sliding after 2 tokens
      (6,)
      >>> generate(lm, params, [1, 2], 6, temperature=-1.0)
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: temperature=-1.0 is not allowed: it must be a finite number > 0.
    """
    L, vocab_size = model.max_length, model.vocab_size
    check_sampling_args(
        num_tokens=num_tokens, temperature=temperature, top_k=top_k, seed=seed, vocab_size=vocab_size, names=names
    )
    ids = check_prompt_ids(prompt_ids, vocab_size, L, names)
    if step is None:
        step = _cached_step(model, top_k)
    elif step.model != model or step.top_k != top_k:
        raise InvalidArgumentError(
            f"step was made for another model or top_k ({step.top_k}); this call has top_k={top_k}."
        )
    params = nn.unbox(params)
    window_1xL, length = np.pad(ids, (0, L - ids.size))[None].astype(np.int32), np.int32(ids.size)
    mesh = params_mesh(params)
    if mesh is not None:  # placed as the step returns them (replicated): one compiled program
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        window_1xL, length = jax.device_put((window_1xL, length), replicated)
    else:
        window_1xL, length = jnp.asarray(window_1xL), jnp.asarray(length)
    key, temp = jax.random.key(seed), jnp.float32(temperature)
    tokens = []
    for i in range(num_tokens):  # dispatch is asynchronous: the host waits once, at the end
        token, window_1xL, length = step(params, window_1xL, length, key, jnp.int32(i), temp)
        tokens.append(token)
    return np.asarray(jax.device_get(tokens), dtype=np.int32)


def sample_text(
    model: Any,
    params: Any,
    enc: Any,
    prompt: str,
    num_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    active_ids: np.ndarray | None = None,
    names: Mapping[str, str] | None = None,
) -> str:
    """``prompt`` followed by ``num_tokens`` sampled tokens, as text (``enc.decode``).

    Args:
      model, params: as ``generate``.
      enc: the run's tokenizer (tiktoken ``Encoding``); ``<|endoftext|>`` in
        the prompt is the special token, as in training.
      prompt: the text to continue: at least one token, at most ``model.max_length``.
      num_tokens, temperature, top_k, seed, names: as ``generate``.
      active_ids: with ``model.active_vocab``, the tokenizer ids the model's
        rows stand for (``Run.active_ids``): the prompt is mapped into them and
        the samples mapped back.

    Returns:
      The prompt and its continuation, decoded together (a sampled token
      that is part of a multi-byte character may decode to U+FFFD).

    Raises:
      InvalidArgumentError: as ``generate``, or a prompt token the model has
        no row for (not in ``active_ids``; the message names it).

    Example:
      >>> from jaxembed.nn.model import EmbeddingLM
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> lm = EmbeddingLM(vocab_size=enc.n_vocab, max_length=8, features=8)
      >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
      >>> text = sample_text(lm, params, enc, "ROMEO:", 5, seed=1)
      >>> text.startswith("ROMEO:"), text == sample_text(lm, params, enc, "ROMEO:", 5, seed=1)
      (True, True)
    """
    n = _names(names)
    check_sampling_args(
        num_tokens=num_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        vocab_size=model.vocab_size,
        names=names,
    )
    token_ids = np.asarray(enc.encode(prompt, allowed_special={"<|endoftext|>"}), dtype=np.int64)
    if token_ids.size == 0:
        raise InvalidArgumentError(f"{n['prompt']}={prompt!r} is not allowed: it must encode to at least one token.")
    if active_ids is None:
        model_ids = token_ids
    else:
        active_ids = np.asarray(active_ids)
        where = np.searchsorted(active_ids, token_ids)
        found = (where < active_ids.size) & (active_ids[np.minimum(where, active_ids.size - 1)] == token_ids)
        if not found.all():
            missing = int(token_ids[np.flatnonzero(~found)[0]])
            raise InvalidArgumentError(
                f"{n['prompt']}: token {enc.decode([missing])!r} (id {missing}) is not in the model's active "
                f"vocabulary (model.active_vocab: the {active_ids.size:,} tokens of its training text); "
                "leave it out or rephrase."
            )
        model_ids = where
    sampled = generate(
        model, params, model_ids, num_tokens, temperature=temperature, top_k=top_k, seed=seed, names=names
    )
    if active_ids is not None:
        sampled = active_ids[sampled]
    return enc.decode([*token_ids.tolist(), *sampled.tolist()])


__all__ = [
    "ARGUMENT_NAMES",
    "SUGGESTED_TEMPERATURE",
    "SUGGESTED_TOP_K",
    "SamplingStep",
    "check_prompt_ids",
    "check_sampling_args",
    "generate",
    "params_mesh",
    "sample_text",
]
