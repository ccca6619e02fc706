"""The compiled training step: state, optimiser, mesh, shardings, one ``Trainer``.

``Trainer`` owns the jitted, ahead-of-time compiled train and eval steps
with explicit in/out shardings and a donated state (as nanodo's
``Trainer.__init__`` owns its ``step_fn``). The training loop, the scripts
and every benchmark build their step through it, so what the benchmarks
measure is what ``jaxembed train`` runs. The pure pieces (``train_step``,
``eval_step``, ``make_optimizer``, ``create_train_state``) are importable
for other loops.

Example:
  >>> from jaxembed.config import named_config
  >>> config = named_config("tiny")
  >>> trainer = Trainer.from_config(config, vocab_size=1000)
  >>> state = trainer.init(jax.random.key(0))
  >>> ids_BxL = jnp.zeros((16, 16), jnp.int32)
  >>> state, metrics = trainer.step(state, ids_BxL, ids_BxL)
  >>> int(state.step), sorted(metrics)
  (1, ['grad_norm', 'loss'])
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxembed.configs.default import AXIS_RULES
from jaxembed.errors import InvalidArgumentError, InvalidTypeError
from jaxembed.nn.losses import auto_tile_tokens
from jaxembed.nn.model import EmbeddingLM, make_model

AxisRules = Sequence[tuple[str, str | None]]

#: Logical axis names -> mesh axes when a config gives none (``mesh.logical_axis_rules``).
DEFAULT_AXIS_RULES: AxisRules = AXIS_RULES


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: a pytree, checkpointed as a whole."""

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array  # raw uint32 key data, so orbax can save it


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``optim.learning_rate``, cosine decay to its final fraction.

    Example:
      >>> from jaxembed.config import base_config
      >>> schedule = learning_rate_schedule(base_config().optim, total_steps=100)
      >>> float(schedule(0)), round(float(schedule(50)), 6)
      (0.0, 0.01)
    """
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.learning_rate * optim.final_lr_fraction,
    )


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a warmup + cosine-decay schedule.

    Example:
      >>> from jaxembed.config import base_config
      >>> tx = make_optimizer(base_config().optim, total_steps=100)
      >>> tx.init({"w": jnp.zeros(2)})[1][0].count.tolist()
      0
    """
    mask = None
    if optim.weight_decay > 0:  # no mask without decay: the optimiser state keeps its old layout
        mask = functools.partial(decay_mask, decay_embeddings=optim.decay_embeddings)
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        optax.adamw(
            learning_rate_schedule(optim, total_steps),
            b1=optim.b1,
            b2=optim.b2,
            weight_decay=optim.weight_decay,
            mask=mask,
        ),
    )


def decay_mask(params: Any, *, decay_embeddings: bool = True) -> Any:
    """Which parameters AdamW's weight decay applies to: matrices, not biases or norms.

    The field's convention (nanoGPT's ``configure_optimizers``, MaxText): attention kernels are
    decayed; every ``bias`` and LayerNorm ``scale`` is not. The two embedding tables are a choice
    (``optim.decay_embeddings``): nanoGPT decays them (they are matrices); turning it off keeps
    rarely seen tokens' rows from shrinking towards zero between their updates.

    Example:
      >>> import jax.numpy as jnp
      >>> tree = {"embed": {"token": {"embedding": jnp.ones((4, 2))}}, "ln": {"scale": jnp.ones(2)},
      ...         "attn": {"query": {"kernel": jnp.ones((2, 1, 2)), "bias": jnp.ones((1, 2))}}}
      >>> decay_mask(tree, decay_embeddings=False)
      {'attn': {'query': {'bias': False, 'kernel': True}}, 'embed': {'token': {'embedding': False}}, 'ln': {'scale': False}}
    """

    def decayed(path, _leaf) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        name = next((n for n in reversed(names) if n not in ("value", "")), "")
        return name == "kernel" or (name == "embedding" and decay_embeddings)

    return jax.tree_util.tree_map_with_path(decayed, params)


def check_platforms() -> None:
    """Fails in one line when ``$JAX_PLATFORMS`` names a backend this machine cannot start.

    JAX raises a ``RuntimeError`` (or, for ``cuda``/``gpu`` without a plugin, a bare
    ``AssertionError``) from deep inside its backend set-up; this names the variable, its value
    and the backends whose plugins are installed.

    Raises:
      InvalidArgumentError: the backend cannot be initialised.

    Example:
      >>> check_platforms()  # the default (unset) always works
    """
    value = os.environ.get("JAX_PLATFORMS", "")
    if not value:
        return
    try:
        jax.devices()
    except (RuntimeError, AssertionError, ValueError) as e:
        import importlib.util

        plugins = {"cuda": ("jax_cuda12_plugin", "jax_cuda13_plugin"), "tpu": ("libtpu",)}
        have = ["cpu"] + [name for name, mods in plugins.items() if any(importlib.util.find_spec(m) for m in mods)]
        reason = str(e).splitlines()[0] if str(e) else "JAX found no plugin for it"
        raise InvalidArgumentError(
            f"JAX_PLATFORMS={value!r} names a backend this machine cannot start ({reason}); installed here: "
            f"{', '.join(have)}. Unset JAX_PLATFORMS (JAX then picks the best one) or set it to one of those."
        ) from None


def check_mesh_fits(model: EmbeddingLM, model_axis: int) -> None:
    """Refuses, before anything is compiled, a model whose split dimensions ``model_axis`` devices cannot share.

    The token table's rows and the attention heads are split over the mesh's ``model`` axis
    (``configs/default.py``'s ``AXIS_RULES``); JAX would otherwise fail deep in sharding with
    "array axis 0 is partitioned 2 times, but the dimension size is 3", naming no setting.

    Raises:
      InvalidArgumentError: naming ``mesh.model``, ``model.num_heads`` or ``model.vocab_multiple``
        and values that would fit.

    Example:
      >>> from jaxembed.nn.model import EmbeddingLM
      >>> check_mesh_fits(EmbeddingLM(vocab_size=100, max_length=4, features=8, num_layers=1, num_heads=2), 2)
    """
    if model_axis <= 1:
        return
    if model.num_layers > 0 and model.num_heads % model_axis:
        fits = [d for d in range(1, model.num_heads + 1) if model.num_heads % d == 0]
        raise InvalidArgumentError(
            f"mesh.model={model_axis} cannot split model.num_heads={model.num_heads} attention heads: set "
            f"--config.mesh.model to one of {fits} or --config.model.num_heads to a multiple of {model_axis}."
        )
    rows = model.padded_vocab_size
    if rows % model_axis:
        raise InvalidArgumentError(
            f"mesh.model={model_axis} cannot split the token table's {rows:,} rows (model.vocab_multiple="
            f"{model.vocab_multiple}): set --config.model.vocab_multiple to a multiple of {model_axis} (e.g. 128)."
        )


def make_mesh(data_axis: int = -1, model_axis: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``("data", "model")`` device mesh; ``-1`` takes all remaining devices.

    Raises:
      TypeError: a size is not an int (e.g. a config passed instead of ``config.mesh.data``).
      ValueError: a size is 0 or below -1, both are -1, or the devices do not
        fit (the message names ``mesh.data`` / ``mesh.model``).

    Example:
      >>> make_mesh().axis_names
      ('data', 'model')
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data_axis, model_axis]
    for name, size in zip(("data", "model"), sizes):
        if isinstance(size, bool) or not isinstance(size, int | np.integer):
            raise InvalidTypeError(
                f"mesh.{name} must be an int (a number of devices, or -1: all remaining), got {type(size).__name__}."
            )
        if size == 0 or size < -1:
            raise InvalidArgumentError(f"mesh.{name}={size} is not allowed; use a positive size or -1.")
    if sizes.count(-1) > 1:
        raise InvalidArgumentError("only one of mesh.data and mesh.model may be -1.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes and len(devices) % known:
        fixed = "mesh.model" if sizes[0] == -1 else "mesh.data"
        raise InvalidArgumentError(
            f"{fixed}={known} does not divide the {len(devices)} available device(s) (the other axis, -1, takes "
            "the rest): choose a divisor."
        )
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) > len(devices):
        raise InvalidArgumentError(
            f"mesh.data={sizes[0]} x mesh.model={sizes[1]} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} {'is' if len(devices) == 1 else 'are'} available."
        )
    # jax.devices() lists devices process by process, so `data` rows follow processes.
    return Mesh(np.asarray(devices[: math.prod(sizes)]).reshape(sizes), ("data", "model"))


def _init_boxed(key: jax.Array, model: EmbeddingLM, tx: optax.GradientTransformation) -> TrainState:
    params = model.init(key, jnp.zeros((1, model.max_length), jnp.int32))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), key=jax.random.key_data(key)
    )


def state_shardings(
    model: EmbeddingLM, tx: optax.GradientTransformation, mesh: Mesh, rules: AxisRules = DEFAULT_AXIS_RULES
) -> tuple[TrainState, TrainState]:
    """``(abstract_state, shardings)`` from the modules' logical axis names and ``rules``.

    Example:
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=2)
      >>> abstract, shardings = state_shardings(lm, optax.adam(1e-3), make_mesh())
      >>> abstract.params["params"]["embed"]["token"]["embedding"].shape
      (10, 2)
    """
    boxed = jax.eval_shape(functools.partial(_init_boxed, model=model, tx=tx), jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)
    return abstract, shardings


def create_train_state(
    model: EmbeddingLM,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    key: jax.Array,
    rules: AxisRules = DEFAULT_AXIS_RULES,
) -> TrainState:
    """Initialises params and optimiser state directly into their sharded layout.

    Example:
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=2)
      >>> state = create_train_state(lm, optax.adam(1e-3), make_mesh(), jax.random.key(0))
      >>> state.params["params"]["embed"]["token"]["embedding"].shape
      (10, 2)
    """
    _, shardings = state_shardings(model, tx, mesh, rules)
    init = jax.jit(lambda k: nn.unbox(_init_boxed(k, model, tx)), out_shardings=shardings)
    return init(key)


def train_step(
    state: TrainState,
    inputs_BxL: jax.Array,
    targets_BxL: jax.Array,
    *,
    model: EmbeddingLM,
    tx: optax.GradientTransformation,
    loss_tile_tokens: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on next-token cross-entropy. Pure; jit it.

    ``loss_tile_tokens`` > 0 computes the loss over tiles of that many tokens
    (``EmbeddingLM.loss``): the same numbers without the ``[B, L, V]`` logits.

    Returns:
      ``(new_state, {"loss", "grad_norm"})``: the batch's mean loss (nats per
      token) and the global L2 norm of the gradients before clipping.

    Example:
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=2)
      >>> tx = optax.sgd(0.1)
      >>> state = create_train_state(lm, tx, make_mesh(), jax.random.key(0))
      >>> ids = jnp.array([[1, 2, 3, 4]])
      >>> state, metrics = jax.jit(functools.partial(train_step, model=lm, tx=tx))(state, ids, ids)
      >>> int(state.step), metrics["loss"].shape
      (1, ())
    """

    def loss_fn(params):
        return model.apply(params, inputs_BxL, targets_BxL, tile_tokens=loss_tile_tokens, method=EmbeddingLM.loss)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def eval_step(
    params: Any, inputs_BxL: jax.Array, targets_BxL: jax.Array, *, model: EmbeddingLM, loss_tile_tokens: int = 0
) -> jax.Array:
    """Mean next-token cross-entropy (nats per token) of one held-out batch."""
    return model.apply(params, inputs_BxL, targets_BxL, tile_tokens=loss_tile_tokens, method=EmbeddingLM.loss)


class Trainer:
    """The model, optimiser, mesh and shardings, with the steps compiled ahead of time.

    Args:
      model: the ``EmbeddingLM`` to train.
      tx: the optax optimiser.
      mesh: the device mesh (``make_mesh``).
      batch_size: global rows per batch (split over the mesh's ``data`` axis).
      rules: logical axis name -> mesh axis (``mesh.logical_axis_rules``).
      loss_tile_tokens: tokens per loss tile (``model.loss_tile_tokens``; 0: dense logits).

    Attributes:
      step: the compiled ``train_step``: ``(state, inputs_BxL, targets_BxL) ->
        (state, metrics)``; donates ``state``.
      eval: the compiled ``eval_step``: ``(params, inputs_BxL, targets_BxL) -> loss``.
      compiled_step: the ``jax.stages.Compiled`` of ``step``, for
        ``memory_analysis()`` and ``cost_analysis()``.
    """

    def __init__(
        self,
        model: EmbeddingLM,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        *,
        batch_size: int,
        rules: AxisRules = DEFAULT_AXIS_RULES,
        loss_tile_tokens: int = 0,
    ):
        self.model, self.tx, self.mesh, self.rules = model, tx, mesh, tuple(map(tuple, rules))
        self.loss_tile_tokens = loss_tile_tokens
        self.abstract_state, self.state_shardings = state_shardings(model, tx, mesh, self.rules)
        self.batch_sharding = NamedSharding(mesh, P("data", None))
        batch = jax.ShapeDtypeStruct((batch_size, model.max_length), jnp.int32, sharding=self.batch_sharding)
        # Compiled ahead of time so that tokens/s never includes compilation.
        self.compiled_step = (
            jax.jit(
                functools.partial(train_step, model=model, tx=tx, loss_tile_tokens=loss_tile_tokens),
                in_shardings=(self.state_shardings, self.batch_sharding, self.batch_sharding),
                out_shardings=(self.state_shardings, None),
                donate_argnums=0,
            )
            .lower(self.abstract_state, batch, batch)
            .compile()
        )
        self.step = self.compiled_step
        self.eval = (
            jax.jit(
                functools.partial(eval_step, model=model, loss_tile_tokens=loss_tile_tokens),
                in_shardings=(self.state_shardings.params, self.batch_sharding, self.batch_sharding),
            )
            .lower(self.abstract_state.params, batch, batch)
            .compile()
        )
        self.eval_shape_BxL = (batch_size, model.max_length)
        # Other lengths (evaluation past the trained context) compile once per shape, when asked.
        self._eval_any_length = jax.jit(
            functools.partial(eval_step, model=model, loss_tile_tokens=loss_tile_tokens),
            in_shardings=(self.state_shardings.params, self.batch_sharding, self.batch_sharding),
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int, mesh: Mesh | None = None) -> Trainer:
        """The trainer ``config`` describes, for a vocabulary of ``vocab_size`` tokens.

        ``mesh`` defaults to ``make_mesh(config.mesh.data, config.mesh.model)``.
        """
        mesh = make_mesh(config.mesh.data, config.mesh.model) if mesh is None else mesh
        model = make_model(config.model, vocab_size=vocab_size, max_length=config.data.max_length)
        check_mesh_fits(model, int(mesh.shape["model"]))
        tx = make_optimizer(config.optim, config.train.steps)
        rules = config.mesh.logical_axis_rules
        tile = config.model.loss_tile_tokens
        if tile is None:
            tile = auto_tile_tokens(model.padded_vocab_size, jax.default_backend(), features=model.features)
        return cls(model, tx, mesh, batch_size=config.data.batch_size, rules=rules, loss_tile_tokens=tile)

    def init(self, key: jax.Array) -> TrainState:
        """A fresh state, initialised straight into its sharded layout."""
        return create_train_state(self.model, self.tx, self.mesh, key, self.rules)

    def evaluate(self, params: Any, batches: Sequence[tuple[jax.Array, jax.Array]]) -> float:
        """Mean validation loss over ``batches`` (nats per token).

        Batches of another length than ``max_length`` (``[B, nL]``) run a program compiled for
        their shape on first use; only schemes other than ``"learned"`` accept longer ones.
        """
        compiled = self.eval_shape_BxL
        losses = [(self.eval if x.shape == compiled else self._eval_any_length)(params, x, y) for x, y in batches]
        return float(np.mean(losses))
