"""Training: a jit-compiled optax step that makes the embeddings learn.

``train_and_evaluate(config, workdir)`` runs the whole job: corpus -> tokens
-> train/validation split -> Grain windows -> ``EmbeddingLM`` on a device
mesh -> AdamW with warmup + cosine decay -> metrics, orbax checkpoints,
exact resume. The pieces are importable for use in other loops:
``make_optimizer``, ``make_mesh``, ``create_train_state``, ``train_step``,
``eval_step``.

Example:
  >>> from jaxembed.config import base_config
  >>> config = base_config()
  >>> config.model.features, config.data.max_length, config.train.steps = 8, 8, 2
  >>> result = train_and_evaluate(config, workdir=None, text="to be or not to be " * 600,
  ...                             progress=False)
  >>> int(result.state.step), sorted(result.metrics[-1])[:3]
  (2, ['learning_rate', 'step', 'tokens_per_sec'])
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Iterator
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

from jaxembed import corpus, data, tokenizer
from jaxembed.checkpoint import Checkpointer
from jaxembed.model import EmbeddingLM, cross_entropy

#: Logical axis names -> mesh axes: batch over `data`, vocabulary over `model`.
LOGICAL_AXIS_RULES = (("batch", "data"), ("vocab", "model"), ("embed", None), ("position", None))


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or the workdir is unusable)."""


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: a pytree, checkpointed as a whole."""

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array  # raw uint32 key data, so orbax can save it


# --- Building blocks -------------------------------------------------------


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a warmup + cosine-decay schedule.

    Example:
      >>> from jaxembed.config import base_config
      >>> tx = make_optimizer(base_config().optim, total_steps=100)
      >>> tx.init({"w": jnp.zeros(2)})[1][0].count.tolist()
      0
    """
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        optax.adamw(
            learning_rate_schedule(optim, total_steps),
            b1=optim.b1,
            b2=optim.b2,
            weight_decay=optim.weight_decay,
        ),
    )


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``optim.learning_rate``, cosine decay to its final fraction."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.learning_rate * optim.final_lr_fraction,
    )


def make_mesh(data_axis: int = -1, model_axis: int = 1, devices: list | None = None) -> Mesh:
    """A ``("data", "model")`` device mesh; ``-1`` takes all remaining devices.

    Example:
      >>> make_mesh().axis_names
      ('data', 'model')
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data_axis, model_axis]
    for name, size in zip(("data", "model"), sizes):
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{name}={size} is not allowed; use a positive size or -1.")
    if sizes.count(-1) > 1:
        raise ValueError("only one of mesh.data and mesh.model may be -1.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes and len(devices) % known:
        raise ValueError(f"mesh {sizes}: {known} does not divide the {len(devices)} available devices.")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) > len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} x model={sizes[1]} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are available."
        )
    # jax.devices() lists devices process by process, so `data` rows follow processes.
    return Mesh(np.asarray(devices[: math.prod(sizes)]).reshape(sizes), ("data", "model"))


def make_model(config: ml_collections.ConfigDict, vocab_size: int) -> EmbeddingLM:
    """The ``EmbeddingLM`` the config describes."""
    return EmbeddingLM(
        vocab_size=vocab_size,
        max_length=config.data.max_length,
        features=config.model.features,
        init_stddev=config.model.init_stddev,
        dtype=jnp.dtype(config.model.dtype),
        param_dtype=jnp.dtype(config.model.param_dtype),
        vocab_multiple=config.model.vocab_multiple,
    )


def _init_boxed(key: jax.Array, model: EmbeddingLM, tx: optax.GradientTransformation, length: int) -> TrainState:
    params = model.init(key, jnp.zeros((1, length), jnp.int32))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        key=jax.random.key_data(key),
    )


def state_shardings(model: EmbeddingLM, tx: optax.GradientTransformation, mesh: Mesh) -> tuple[TrainState, TrainState]:
    """``(abstract_state, shardings)`` from the modules' logical axis names."""
    boxed = jax.eval_shape(
        functools.partial(_init_boxed, model=model, tx=tx, length=model.max_length), jax.random.key(0)
    )
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)
    return abstract, shardings


def create_train_state(model: EmbeddingLM, tx: optax.GradientTransformation, mesh: Mesh, key: jax.Array) -> TrainState:
    """Initialises params and optimiser state directly into their sharded layout.

    Example:
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=2)
      >>> tx = optax.adam(1e-3)
      >>> state = create_train_state(lm, tx, make_mesh(), jax.random.key(0))
      >>> state.params["params"]["embed"]["token"]["embedding"].shape
      (10, 2)
    """
    _, shardings = state_shardings(model, tx, mesh)
    init = jax.jit(lambda k: nn.unbox(_init_boxed(k, model, tx, model.max_length)), out_shardings=shardings)
    return init(key)


def train_step(
    state: TrainState,
    inputs_BxL: jax.Array,
    targets_BxL: jax.Array,
    *,
    model: EmbeddingLM,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on next-token cross-entropy. Pure; jit it.

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
        return cross_entropy(model.apply(params, inputs_BxL), targets_BxL)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def eval_step(params: Any, inputs_BxL: jax.Array, targets_BxL: jax.Array, *, model: EmbeddingLM) -> jax.Array:
    """Mean next-token cross-entropy of one held-out batch."""
    return cross_entropy(model.apply(params, inputs_BxL), targets_BxL)


# --- Data ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Splits:
    """Token ids of the training and held-out parts of the corpus."""

    train_ids: np.ndarray
    val_ids: np.ndarray
    vocab_size: int

    def train_counts(self) -> np.ndarray:
        """``counts_V``: how often each token occurs in the training split."""
        return np.bincount(self.train_ids, minlength=self.vocab_size)


def load_corpus_text(config: ml_collections.ConfigDict) -> str:
    """The text the config names (``data.text`` path, else ``data.corpus``)."""
    return corpus.load_text(config.data.text or config.data.corpus)


def split_corpus(text: str, config: ml_collections.ConfigDict) -> Splits:
    """Tokenizes ``text`` and holds out its last ``val_fraction`` of tokens.

    Project Gutenberg texts are cut to their body first, so the held-out
    slice is the play, never the licence.

    Example:
      >>> from jaxembed.config import base_config
      >>> s = split_corpus(" Romeo" * 1000, base_config())
      >>> len(s.train_ids), len(s.val_ids)
      (900, 100)
    """
    if corpus.has_gutenberg_markers(text):
        text = corpus.strip_gutenberg(text)
    ids = data.tokenize(text, config.data.tokenizer)
    fraction = config.data.val_fraction
    if not 0 < fraction < 1:
        raise ValueError(f"data.val_fraction={fraction} is not allowed; it must lie in (0, 1).")
    num_val = int(round(len(ids) * fraction))
    return Splits(
        ids[: len(ids) - num_val], ids[len(ids) - num_val :], tokenizer.get_encoding(config.data.tokenizer).n_vocab
    )


def active_vocabulary(splits: Splits) -> np.ndarray:
    """The sorted token ids that occur in the corpus (training or held out)."""
    return np.unique(np.concatenate([splits.train_ids, splits.val_ids]))


def expand_active(token_KxD: np.ndarray, active_ids: np.ndarray | None, vocab_size: int) -> np.ndarray:
    """Places the rows of a compact (active-vocabulary) table at their token ids."""
    if active_ids is None:
        return token_KxD
    token_VxD = np.zeros((vocab_size, token_KxD.shape[1]), token_KxD.dtype)
    token_VxD[active_ids] = token_KxD
    return token_VxD


def _local_batch_size(global_batch: int, mesh: Mesh) -> int:
    data_size, processes = mesh.shape["data"], jax.process_count()
    if global_batch % data_size or global_batch % processes:
        raise ValueError(
            f"data.batch_size={global_batch} must be divisible by the mesh's data axis "
            f"({data_size} devices) and by the number of processes ({processes})."
        )
    return global_batch // processes


def _loader(ids: np.ndarray, config: ml_collections.ConfigDict, local_batch: int, stride: int, **kwargs):
    return data.create_dataloader(
        ids,
        batch_size=local_batch,
        max_length=config.data.max_length,
        stride=stride,
        tokenizer=config.data.tokenizer,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        **kwargs,
    )


def prefetch_to_device(iterator, put, size: int = 2) -> Iterator[tuple[Any, dict]]:
    """Yields ``(put(batch), state)`` while the next batches transfer.

    ``state`` is the Grain iterator state right after that batch was drawn:
    the state to checkpoint once that batch has been trained on.
    """
    queue = collections.deque()

    def enqueue():
        batch = next(iterator)
        queue.append((put(batch), iterator.get_state()))

    for _ in range(size):
        enqueue()
    while True:
        yield queue.popleft()
        enqueue()


# --- The job ---------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What ``train_and_evaluate`` returns."""

    state: TrainState
    metrics: list[dict]
    model: EmbeddingLM
    splits: Splits
    workdir: pathlib.Path | None
    initial_params: Any = None

    active_ids: np.ndarray | None = None

    def tables(self, initial: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(token_VxD, position_LxD)`` as numpy, padding rows dropped.

        ``initial=True`` gives the tables before training. With
        ``model.active_vocab`` the trained rows are placed at their token ids
        and the rows of tokens absent from the corpus are zero.
        """
        from jaxembed.model import embedding_tables

        params = self.initial_params if initial else self.state.params
        token_VxD, position_LxD = embedding_tables(params, self.model.vocab_size)
        return expand_active(token_VxD, self.active_ids, self.splits.vocab_size), position_LxD

    def token_counts(self) -> np.ndarray:
        """``counts_V``: how often each token occurs in the training split."""
        return self.splits.train_counts()


def check_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """Creates ``workdir`` and proves it writable, before any compute."""
    path = pathlib.Path(workdir).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(
            f"workdir {path} cannot be written ({e.strerror or e}); choose another --workdir."
        ) from None
    return path


class MetricsLog:
    """``metrics.jsonl``: one JSON row per logged step, appended as it goes.

    On resume, rows after the restored step (and a torn last line from a
    killed run) are dropped with an atomic rewrite, so the file always reads
    as one uninterrupted run.
    """

    def __init__(self, path: pathlib.Path | None, resume_step: int = 0):
        self.path = path
        self.rows: list[dict] = []
        if path is None or jax.process_index() != 0:
            return
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if resume_step > 0 and row.get("step", 0) <= resume_step:
                    self.rows.append(row)
        _write_atomic(path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None and jax.process_index() == 0:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Rejects settings that cannot run, naming the field and the rule."""
    t = config.train
    for name in ("steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"):
        value = t[name]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"train.{name}={value!r} is not allowed; it must be an integer >= 1.")
    for name in ("dtype", "param_dtype"):
        if config.model[name] not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.{name}={config.model[name]!r} is not allowed; use 'float32' or 'bfloat16'.")
    if config.optim.learning_rate <= 0 or not math.isfinite(config.optim.learning_rate):
        raise ValueError(f"optim.learning_rate={config.optim.learning_rate} must be a finite number > 0.")


def _row_due(step: int, t: ml_collections.ConfigDict) -> tuple[bool, bool, bool]:
    last = step == t.steps
    checkpoint = last or step % t.checkpoint_every == 0
    evaluate = checkpoint or step % t.eval_every == 0  # never save a state whose held-out loss is unknown
    return last or evaluate or checkpoint or step % t.log_every == 0, evaluate, checkpoint


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike | None,
    *,
    text: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains ``EmbeddingLM`` as ``config`` says; resumes from ``workdir``.

    Args:
      config: a config from ``configs/`` (see ``jaxembed.config``).
      workdir: where metrics, checkpoints and the config go; ``None`` keeps
        everything in memory (no checkpoints, no resume).
      text: train on this text instead of the configured corpus.
      progress: show a progress bar.

    Returns:
      The final state, the metrics rows, the model and the data splits.

    Raises:
      TrainingError: the loss became NaN/inf (the last good checkpoint is
        kept), or ``workdir`` cannot be written.
    """
    validate_config(config)
    workdir = check_workdir(workdir) if workdir is not None else None
    if text is None:
        text = load_corpus_text(config)
    splits = split_corpus(text, config)
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    local_batch = _local_batch_size(config.data.batch_size, mesh)
    train_ids, val_ids, active_ids = splits.train_ids, splits.val_ids, None
    if config.model.active_vocab:
        # The model sees compact ids 0..K-1: its table, softmax and AdamW cover K rows.
        active_ids = active_vocabulary(splits)
        train_ids, val_ids = (np.searchsorted(active_ids, ids).astype(np.int32) for ids in (train_ids, val_ids))
    model = make_model(config, splits.vocab_size if active_ids is None else len(active_ids))
    tx = make_optimizer(config.optim, config.train.steps)
    schedule = learning_rate_schedule(config.optim, config.train.steps)
    batch_sharding = NamedSharding(mesh, P("data", None))
    abstract_state, shardings = state_shardings(model, tx, mesh)

    train_loader = _loader(
        train_ids,
        config,
        local_batch,
        config.data.stride,
        shuffle=True,
        seed=config.seed,
        num_epochs=None,
        num_workers=config.data.num_workers,
    )
    eval_batches = _eval_batches(val_ids, config, local_batch, batch_sharding)

    key = jax.random.key(config.seed)
    state = create_train_state(model, tx, mesh, key)
    # The step donates its input state; keep the untrained tables for the report.
    initial_params = jax.tree.map(jnp.copy, state.params)
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints) if workdir else None
    iterator = iter(train_loader)
    start_step = 0
    if ckpt is not None and ckpt.steps():
        state, data_state, start_step = ckpt.restore(abstract_state)
        iterator.set_state(data_state)
        print(f"Resuming from step {start_step} ({ckpt.directory}).", flush=True)
    if workdir is not None and jax.process_index() == 0:
        _write_atomic(workdir / "config.json", config.to_json_best_effort(indent=2))
        np.save(workdir / "token_counts.npy", splits.train_counts())
        if active_ids is not None:
            np.save(workdir / "active_ids.npy", active_ids)
    metrics = MetricsLog(workdir / "metrics.jsonl" if workdir else None, resume_step=start_step)

    batch_shape = jax.ShapeDtypeStruct(
        (config.data.batch_size, config.data.max_length), jnp.int32, sharding=batch_sharding
    )
    # Compiled ahead of time so that tokens/s never includes compilation.
    step_fn = (
        jax.jit(
            functools.partial(train_step, model=model, tx=tx),
            in_shardings=(shardings, batch_sharding, batch_sharding),
            out_shardings=(shardings, None),
            donate_argnums=0,
        )
        .lower(abstract_state, batch_shape, batch_shape)
        .compile()
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model), in_shardings=(shardings.params, batch_sharding, batch_sharding)
    )

    def evaluate_loss(params) -> float:
        return float(np.mean([eval_fn(params, x, y) for x, y in eval_batches]))

    if start_step == 0:
        metrics.append({"step": 0, "learning_rate": float(schedule(0)), "val_loss": evaluate_loss(state.params)})

    batches = prefetch_to_device(iterator, functools.partial(_global_batch, sharding=batch_sharding))
    bar = _progress(start_step, config.train.steps, enabled=progress)
    tokens_per_step = config.data.batch_size * config.data.max_length
    window_losses, window_start, window_steps = [], time.perf_counter(), 0
    try:
        for step in range(start_step + 1, config.train.steps + 1):
            (inputs, targets), data_state = next(batches)
            state, step_metrics = step_fn(state, inputs, targets)
            window_losses.append(step_metrics["loss"])
            window_steps += 1
            due, evaluate, save = _row_due(step, config.train)
            if not due:
                continue
            train_loss = float(jnp.mean(jnp.stack(window_losses)))
            elapsed = time.perf_counter() - window_start
            row = {
                "step": step,
                "train_loss": train_loss,
                "learning_rate": float(schedule(step - 1)),
                "tokens_per_sec": window_steps * tokens_per_step / elapsed,
            }
            if evaluate and math.isfinite(train_loss):
                row["val_loss"] = evaluate_loss(state.params)
            for name in ("train_loss", "val_loss"):
                if name in row and not math.isfinite(row[name]):
                    if ckpt is not None:
                        ckpt.wait()  # an in-flight save of an earlier step counts as the last good one
                    last_good = ckpt.steps()[-1] if ckpt and ckpt.steps() else None
                    raise TrainingError(
                        f"the {'training' if name == 'train_loss' else 'validation'} loss became {row[name]} "
                        f"by step {step}; stopping. "
                        + (f"The last good checkpoint (step {last_good}) is untouched. " if last_good else "")
                        + f"Try a smaller optim.learning_rate (now {config.optim.learning_rate})."
                    )
            metrics.append(row)
            bar(step, row)
            if save and ckpt is not None:
                ckpt.save(step, state, data_state)
            window_losses, window_start, window_steps = [], time.perf_counter(), 0
    finally:
        bar(None, None)
        if ckpt is not None:
            ckpt.close()
        close = getattr(iterator, "close", None)
        if close:
            close()
    return TrainResult(state, metrics.rows, model, splits, workdir, initial_params, active_ids)


def _global_batch(batch: tuple[np.ndarray, ...], sharding: NamedSharding) -> tuple[jax.Array, ...]:
    """This process's rows of each array, assembled into global arrays on the mesh."""
    return tuple(jax.make_array_from_process_local_data(sharding, x) for x in batch)


def _eval_batches(val_ids: np.ndarray, config: ml_collections.ConfigDict, local_batch: int, sharding) -> list:
    windows = data.num_windows(len(val_ids), config.data.max_length, config.data.max_length)
    available = (windows // jax.process_count()) // local_batch
    if available < 1:
        raise ValueError(
            f"the held-out slice has {len(val_ids)} tokens, too few for one validation batch of "
            f"{local_batch} x {config.data.max_length}; raise data.val_fraction "
            f"(now {config.data.val_fraction}) or use a longer text."
        )
    loader = _loader(val_ids, config, local_batch, config.data.max_length, shuffle=False, num_epochs=1)
    batches = []
    for batch, _ in zip(loader, range(min(available, config.train.eval_batches))):
        batches.append(_global_batch(batch, sharding))
    return batches


def _progress(start: int, total: int, *, enabled: bool):
    """A one-line progress bar (step, loss, tokens/s) on stderr."""
    if not enabled or jax.process_index() != 0:
        return lambda step, row: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(step, row):
        if step is None:
            bar.close()
            return
        bar.update(step - bar.n)
        postfix = {"loss": f"{row['train_loss']:.3f}", "tok/s": f"{row['tokens_per_sec']:,.0f}"}
        if "val_loss" in row:
            postfix["val"] = f"{row['val_loss']:.3f}"
        bar.set_postfix(postfix, refresh=True)

    return update


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished or running training run, read back from its workdir."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    step: int
    enc: Any
    token_VxD: np.ndarray
    position_LxD: np.ndarray
    token_counts_V: np.ndarray


def load_run(workdir: str | os.PathLike) -> Run:
    """Reads a run's config, token counts and latest checkpointed tables.

    Read-only: nothing in ``workdir`` is changed.

    Raises:
      CheckpointError: the workdir holds no readable checkpoint.
    """
    from jaxembed.checkpoint import CheckpointError
    from jaxembed.model import embedding_tables

    path = pathlib.Path(workdir).absolute()
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a jaxembed run: {config_path} is missing.")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    enc = tokenizer.get_encoding(config.data.tokenizer)
    active_path = path / "active_ids.npy"
    active_ids = np.load(active_path) if active_path.exists() else None
    model = make_model(config, enc.n_vocab if active_ids is None else len(active_ids))
    tx = make_optimizer(config.optim, config.train.steps)
    abstract_state, _ = state_shardings(model, tx, make_mesh(devices=jax.devices()[:1]))
    checkpointer = Checkpointer(path / "checkpoints")
    try:
        state, _, step = checkpointer.restore(abstract_state, read_only=True)
    finally:
        checkpointer.close()
    token_KxD, position_LxD = embedding_tables(state.params, model.vocab_size)
    token_VxD = expand_active(token_KxD, active_ids, enc.n_vocab)
    return Run(path, config, step, enc, token_VxD, position_LxD, np.load(path / "token_counts.npy"))
