"""Prototype optimisations for jaxembed, measured against today's library.

Each prototype imports jaxembed's pieces and changes one thing; ``run``
measures it in the benchmark's process (alternating with jaxembed as it is
today, and with the reference where torch is present) and returns a row for
each, paying or not (benchmarks/README.md lists what paid).
``python -m benchmarks.prototypes`` runs them on their own.

* ``FastLoader``: ``create_dataloader(num_workers=0)``'s batches, chunks and
  iterator state without Grain's per-element iterator;
  ``split_once_dataloader``: today's Grain loader with each chunk split once.
* ``active_vocab_setup``: softmax and AdamW over the corpus's active
  vocabulary only (an opt-in model change: the softmax normalises over those
  ids; rows of other ids stay as initialised).
* ``fused_clip_adamw``: global-norm clipping + AdamW as one elementwise pass
  (the same arithmetic as ``jaxembed.train.make_optimizer``).
* ``jax_cpu_enable_async_dispatch=False``, measured in child processes
  because it must be set before the CPU client starts.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
from typing import Any, NamedTuple

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cases  # noqa: E402

# --- Data: an in-process loader without Grain's per-element cost -----------------------


class FastLoader:
    """Iterates ``jaxembed.data.WindowBatches`` in-process: no Grain, one gather per chunk.

    Yields exactly the batches ``create_dataloader(num_workers=0)`` yields
    (same order, same values), from the same chunks (``data.CHUNK_TOKENS``
    tokens, the chunks of ``data.WindowBatchChunks``), but without Grain's
    per-element iterator: each chunk is gathered and split into contiguous
    inputs and targets once, and batches are row slices of those. Its
    iterator's state is the dict ``data.Unbatch``'s iterator uses, so either
    restores the other's checkpoints. ``views=True`` copies each window's
    ``L + 1`` ids once and returns inputs and targets as two overlapping
    (non-contiguous) views of that copy: the same values with half the bytes
    written, but writing into ``inputs`` changes ``targets``.

    Example:
      >>> from jaxembed import data
      >>> src = data.window_batches(np.arange(100), batch_size=8, max_length=4, stride=4,
      ...                           shuffle=False, shard_index=0, shard_count=1)
      >>> it = iter(FastLoader(src)); x, y = next(it); it.get_state()
      {'chunk_start': {'next_index': 0}, 'batches_taken': 1}
    """

    def __init__(self, source, chunk_tokens: int | None = None, views: bool = False):
        from jaxembed import data

        self.source, self.views = source, views
        chunk_tokens = data.CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
        self.per_chunk = max(1, chunk_tokens // (source.batch_size * (source.windows.max_length + 1)))

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> FastIterator:
        return FastIterator(self.source, self.per_chunk, self.views)


class FastIterator:
    """The iterator of ``FastLoader``; ``get_state`` / ``set_state`` as ``data.Unbatch``'s."""

    def __init__(self, source, per_chunk: int, views: bool = False):
        self.source, self.per_chunk, self.views = source, per_chunk, views
        self.chunks_per_epoch = -(-source.batches_per_epoch // per_chunk)
        self.next_index = 0  # global batch index over all epochs
        self._first, self._stop, self._inputs, self._targets = 0, 0, None, None

    def __iter__(self):
        return self

    def _fill(self, index: int) -> None:
        src = self.source
        epoch, k = divmod(index, src.batches_per_epoch)
        first = k - k % self.per_chunk  # chunks are aligned like WindowBatchChunks'
        stop = min(first + self.per_chunk, src.batches_per_epoch)
        spans = src.spans(epoch, first, stop)
        if self.views:
            self._inputs, self._targets = spans[:, :-1], spans[:, 1:]
        else:
            from jaxembed import data

            self._inputs, self._targets = data.split_spans(spans)
        base = epoch * src.batches_per_epoch
        self._first, self._stop = base + first, base + stop

    def __next__(self):
        index = self.next_index
        if index >= len(self.source):
            raise StopIteration
        if not self._first <= index < self._stop:
            self._fill(index)
        bsz = self.source.batch_size
        i = (index - self._first) * bsz
        self.next_index = index + 1
        # A final short batch (drop_last=False) is shorter: slicing handles it.
        return self._inputs[i : i + bsz], self._targets[i : i + bsz]

    def get_state(self) -> dict:
        if self.next_index == 0:
            return {"chunk_start": {"next_index": 0}, "batches_taken": 0}
        epoch, k = divmod(self.next_index - 1, self.source.batches_per_epoch)  # the last batch handed out
        chunk = epoch * self.chunks_per_epoch + k // self.per_chunk
        return {"chunk_start": {"next_index": chunk}, "batches_taken": k % self.per_chunk + 1}

    def set_state(self, state: dict) -> None:
        epoch, c = divmod(int(state["chunk_start"]["next_index"]), self.chunks_per_epoch)
        self.next_index = epoch * self.source.batches_per_epoch + c * self.per_chunk + int(state["batches_taken"])
        self._first = self._stop = 0


def fast_dataloader(
    ids,
    batch_size,
    max_length,
    stride,
    shuffle=True,
    drop_last=True,
    seed=0,
    num_epochs=1,
    shard_index=0,
    shard_count=1,
    views=False,
) -> FastLoader:
    """``create_dataloader``'s arguments (``num_workers=0``), served by ``FastLoader``."""
    from jaxembed import data

    source = data.window_batches(
        ids,
        batch_size=batch_size,
        max_length=max_length,
        stride=stride,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    return FastLoader(source, views=views)


def split_once_dataloader(
    ids,
    batch_size,
    max_length,
    stride,
    shuffle=True,
    drop_last=True,
    seed=0,
    num_epochs=1,
    shard_index=0,
    shard_count=1,
):
    """``create_dataloader`` as it is (Grain chunks + ``Unbatch``), but each chunk is split once.

    Today's ``_UnbatchIterator`` calls ``split_spans`` (two small copies) per
    batch; this variant splits the whole chunk into contiguous inputs and
    targets when it arrives and hands out row slices of them. Same batches,
    same iterator state.
    """
    import grain

    from jaxembed import data

    batches = data.window_batches(
        ids,
        batch_size=batch_size,
        max_length=max_length,
        stride=stride,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    per_chunk = max(1, data.CHUNK_TOKENS // (batch_size * (max_length + 1)))
    chunks = grain.MapDataset.source(data.WindowBatchChunks(batches, per_chunk))
    loader = chunks.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return _SplitOnceUnbatch(loader, batch_size)


def _split_once_classes():
    from jaxembed import data

    class SplitOnceIterator(data._UnbatchIterator):
        def __next__(self):
            if self._chunk is None or self._offset * self._batch_size >= len(self._chunk[0]):
                self._chunk_state = self._parent.get_state()
                self._chunk, self._offset = data.split_spans(next(self._parent)), 0
            start = self._offset * self._batch_size
            self._offset += 1
            inputs, targets = self._chunk
            return inputs[start : start + self._batch_size], targets[start : start + self._batch_size]

        def set_state(self, state):
            self._parent.set_state(state["chunk_start"])
            self._chunk_state, self._chunk, self._offset = state["chunk_start"], None, 0
            if state["batches_taken"]:
                self._chunk = data.split_spans(next(self._parent))
                self._offset = state["batches_taken"]

    class SplitOnceUnbatch(data.Unbatch):
        def __iter__(self):
            return SplitOnceIterator(self._parent.__iter__(), self.batch_size)

    return SplitOnceUnbatch


def _SplitOnceUnbatch(parent, batch_size):  # noqa: N802 - a class made on first use
    return _split_once_classes()(parent, batch_size)


def data_prototypes(settings, hw: dict, which: tuple[str, ...]) -> list[dict]:
    """FastLoader, its views variant and a split-once Unbatch against today's loader."""
    from benchmarks import run as runner

    ids = cases.corpus_ids()
    rows = []
    for max_length, stride, batch in runner.DATA_CASES:
        case = cases.data_case(ids, max_length, stride, batch, which=which)
        per_epoch = case.extra["batches"]
        variants = {
            "split_once": iter(split_once_dataloader(ids, batch, max_length, stride, num_epochs=None)),
            "fast": iter(fast_dataloader(ids, batch, max_length, stride, num_epochs=None)),
            "views": iter(fast_dataloader(ids, batch, max_length, stride, num_epochs=None, views=True)),
        }
        for key, it in variants.items():

            def epoch(it=it, per_epoch=per_epoch):
                for _ in range(per_epoch):
                    next(it)

            case.impls[key] = epoch
        cases.finish_floor(case, hw["bandwidth_Bps"], hw["matmul_flops"]["peak"])
        row = runner.summarize(case, runner.measure(case.impls, settings))
        name = f"data ({max_length}, {stride}, {batch})"
        rows.append(
            _row(
                "Grain chunks + Unbatch splitting each chunk once",
                name,
                row,
                "split_once",
                "yes: identical batches",
                floor_terms=dict(case.floor_terms),
            )
        )
        rows.append(
            _row(
                "FastLoader (no Grain: in-process, chunked gather)",
                name,
                row,
                "fast",
                "yes: identical batches",
                floor_terms=dict(case.floor_terms),
            )
        )
        views_bytes = case.extra["batches"] * batch * 2 * (max_length + 1) * 4  # read and write L+1 ids
        rows.append(
            _row(
                "FastLoader, inputs/targets as views",
                name,
                row,
                "views",
                "same values; inputs and targets share memory",
                floor_terms={"bytes": views_bytes},
            )
        )
        print(
            f"prototype data {case.name}: today {row['jaxembed_tokens_per_s'] / 1e6:.1f} Mtok/s, split once "
            f"{row['split_once_tokens_per_s'] / 1e6:.1f}, FastLoader {row['fast_tokens_per_s'] / 1e6:.1f} "
            f"(views {row['views_tokens_per_s'] / 1e6:.1f})"
            + (f", reference {row['reference_tokens_per_s'] / 1e6:.2f} Mtok/s" if "reference_s" in row else ""),
            flush=True,
        )
    return rows


# --- Train step: one-pass clipping + AdamW -------------------------------------------------


class FusedAdamWState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


def fused_clip_adamw(optim, total_steps: int):
    """``clip_by_global_norm`` then ``adamw`` (as ``make_optimizer``) in one elementwise pass.

    Same arithmetic as optax's chain up to rounding: the clipped gradient,
    the moments, the bias corrections and the update are computed per
    element inside one expression, so XLA reads each of param, grad, mu, nu
    once and writes param, mu, nu once instead of materialising the clipped
    gradient and the update.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jaxembed import train

    schedule = train.learning_rate_schedule(optim, total_steps)
    b1, b2, eps, wd, max_norm = optim.b1, optim.b2, 1e-8, optim.weight_decay, optim.grad_clip

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return FusedAdamWState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params):
        g_norm = optax.tree.norm(grads)
        scale = jnp.where(g_norm < max_norm, 1.0, max_norm / g_norm)
        count = optax.safe_increment(state.count)
        lr = schedule(state.count)
        bc1 = 1 - b1 ** count.astype(jnp.float32)
        bc2 = 1 - b2 ** count.astype(jnp.float32)

        def leaf(g, m, v, p):
            g = g * scale.astype(g.dtype)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            u = (m / bc1) / (jnp.sqrt(v / bc2) + eps)
            return -lr * (u + wd * p), m, v

        out = jax.tree.map(leaf, grads, state.mu, state.nu, params)
        is_triple = lambda x: isinstance(x, tuple) and len(x) == 3  # noqa: E731
        updates = jax.tree.map(lambda t: t[0], out, is_leaf=is_triple)
        mu = jax.tree.map(lambda t: t[1], out, is_leaf=is_triple)
        nu = jax.tree.map(lambda t: t[2], out, is_leaf=is_triple)
        return updates, FusedAdamWState(count, mu, nu)

    return init, update


def fused_adamw_transformation(optim, total_steps: int):
    """``fused_clip_adamw`` as an ``optax.GradientTransformation`` (returns updates).

    A drop-in for ``jaxembed.train.make_optimizer``: ``jaxembed.train.train_step``
    runs it unchanged (``tx.update`` then ``optax.apply_updates``), and XLA
    fuses the final addition into the same elementwise pass.
    """
    import optax

    init, update = fused_clip_adamw(optim, total_steps)
    return optax.GradientTransformation(init, update)


def fused_train_setup(batch, length, features, vocab, config_overrides=None):
    """``(step_fn, state)``: ``jaxembed.train.train_step`` with ``fused_adamw_transformation`` as ``tx``."""
    import jax

    from jaxembed import train

    config = cases.make_config(batch, length, features, config_overrides)
    model = train.make_model(config, vocab)
    tx = fused_adamw_transformation(config.optim, config.train.steps)
    state = train.create_train_state(model, tx, train.make_mesh(), jax.random.key(config.seed))
    return jax.jit(functools.partial(train.train_step, model=model, tx=tx), donate_argnums=0), state


# --- Train step: the corpus's active vocabulary -------------------------------------------


def active_vocab_setup(batch, length, features, vocab, active_ids, config_overrides=None):
    """``(step_fn, state)``: softmax and AdamW over ``active_ids`` only.

    The parameters keep jaxembed's full layout (a ``[V, D]`` token table, so
    checkpoints, reports and exports are unchanged); the optimiser state
    covers the ``K`` active rows only. Each step gathers the active rows,
    runs ``EmbeddingLM`` with ``vocab_size=K`` on remapped ids, updates the
    ``[K, D]`` rows with AdamW and scatters them back in place.
    """
    import jax
    import jax.numpy as jnp

    from jaxembed import train
    from jaxembed.model import EmbeddingLM, cross_entropy

    config = cases.make_config(batch, length, features, config_overrides)
    full = train.make_model(config, vocab)
    active = np.asarray(sorted(set(int(i) for i in active_ids)), np.int32)
    k = len(active)
    remap = np.zeros(full.padded_vocab_size, np.int32)
    remap[active] = np.arange(k, dtype=np.int32)
    compact = EmbeddingLM(
        vocab_size=k,
        max_length=length,
        features=features,
        init_stddev=config.model.init_stddev,
        dtype=full.dtype,
        param_dtype=full.param_dtype,
    )
    tx = train.make_optimizer(config.optim, config.train.steps)
    import flax.linen as nn

    params = nn.unbox(full.init(jax.random.key(config.seed), np.zeros((1, length), np.int32)))
    active_j, remap_j = jnp.asarray(active), jnp.asarray(remap)

    def sub(params):
        embed = params["params"]["embed"]
        return {
            "params": {
                "embed": {"token": {"embedding": embed["token"]["embedding"][active_j]}, "position": embed["position"]}
            }
        }

    state = {"params": params, "opt": tx.init(sub(params))}

    def step(state, inputs, targets):
        import optax

        small = sub(state["params"])
        x, y = remap_j[inputs], remap_j[targets]
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(compact.apply(p, x), y))(small)
        updates, opt = tx.update(grads, state["opt"], small)
        small = optax.apply_updates(small, updates)
        embed = state["params"]["params"]["embed"]
        table = embed["token"]["embedding"].at[active_j].set(small["params"]["embed"]["token"]["embedding"])
        params = {
            "params": {"embed": {"token": {"embedding": table}, "position": small["params"]["embed"]["position"]}}
        }
        return {"params": params, "opt": opt}, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(step, donate_argnums=0), state, k


def step_components(batch: int, length: int, features: int = 256, vocab: int = cases.GPT2_VOCAB) -> dict:
    """Zero-argument callables for the parts of jaxembed's step, to see what bounds it.

    ``full step`` (``jaxembed.train.train_step``), ``forward`` (logits and
    loss), ``forward + backward`` (``value_and_grad``, the gradient written
    to a fresh buffer), ``optax clip + AdamW`` and ``fused clip + AdamW``
    (each alone, on a fixed gradient, state donated).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jaxembed import train
    from jaxembed.model import cross_entropy

    inputs_np, targets_np = cases.train_batch(batch, length, vocab)
    x, y = jnp.asarray(inputs_np), jnp.asarray(targets_np)
    config = cases.make_config(batch, length, features)
    model = train.make_model(config, vocab)
    tx = train.make_optimizer(config.optim, config.train.steps)
    state = train.create_train_state(model, tx, train.make_mesh(), jax.random.key(config.seed))
    params = state.params
    loss_fn = lambda p: cross_entropy(model.apply(p, x), y)  # noqa: E731
    forward, grad_fn = jax.jit(loss_fn), jax.jit(jax.value_and_grad(loss_fn))
    grads = grad_fn(params)[1]

    # Donated inputs come in the order the outputs leave: JAX pairs donated buffers with
    # outputs by position, and a crossed pairing (params' output into mu's buffer) makes XLA
    # copy around the aliasing (3x slower here).
    def optax_update(g, p, opt_state):
        updates, opt_state = tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    optax_fn = jax.jit(optax_update, donate_argnums=(1, 2))
    init, update = fused_clip_adamw(config.optim, config.train.steps)

    def fused_update(g, p, opt_state):
        updates, opt_state = update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    fused_fn = jax.jit(fused_update, donate_argnums=(1, 2))
    box = {
        "optax": (jax.tree.map(jnp.copy, params), state.opt_state),
        "fused": (jax.tree.map(jnp.copy, params), init(params)),
    }

    def run_optax():
        p, o = box["optax"]
        box["optax"] = optax_fn(grads, p, o)
        jax.block_until_ready(box["optax"])

    def run_fused():
        p, o = box["fused"]
        box["fused"] = fused_fn(grads, p, o)  # -> (params, state)
        jax.block_until_ready(box["fused"])

    return {
        "full step": cases.warm_step(batch, length, features, vocab),
        "forward": lambda: jax.block_until_ready(forward(params)),
        "forward + backward": lambda: jax.block_until_ready(grad_fn(params)),
        "optax clip + AdamW alone": run_optax,
        "fused clip + AdamW alone": run_fused,
    }


# --- Child processes: settings that must precede the CPU client ------------------------------

CHILD_VARIANTS = {
    "baseline": {},
    "sync dispatch": {"jax_cpu_enable_async_dispatch": False},
}


def child_main(spec: dict) -> dict:
    """Measures the embed [8, 4] forward and the seed-size train step under one variant."""
    import jax

    for key, value in spec.get("config", {}).items():
        jax.config.update(key, value)
    from benchmarks import run as runner

    settings = runner.Settings(
        quick=False,
        reference=False,
        reps=spec["reps"],
        warmup=2,
        min_rep_s=0.2,
        out=None,
        memory=False,
        sweep=False,
        prototypes=False,
    )
    which = tuple(spec["which"])
    out = {}
    embed = cases.embed_case(8, 4, 256, which=which)
    times = runner.measure(embed.impls, settings)
    out["embed_8x4"] = {k: statistics.median(v) for k, v in times.items()}
    train = cases.train_case(8, 4, 256, which=tuple(w for w in which if w == "jaxembed"))
    times = runner.measure(train.impls, settings)
    out["train_8x4"] = {k: statistics.median(v) for k, v in times.items()}
    return out


def _run_child(name: str, spec: dict) -> dict:
    env = dict(os.environ)
    variant = CHILD_VARIANTS[name]
    config = {k: v for k, v in variant.items() if k.startswith("jax_")}
    if "XLA_FLAGS" in variant:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + variant["XLA_FLAGS"]).strip()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.prototypes", "--child", json.dumps({**spec, "config": config})],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"prototype child {name!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# --- The measurements ---------------------------------------------------------------------


def run(settings, hw: dict, train_rows: list[dict]) -> list[dict]:
    """Measures every prototype; returns table rows (variant, case, step_s, speedups, exact)."""
    from benchmarks import run as runner

    which = ("jaxembed", "reference") if settings.reference else ("jaxembed",)
    rows = []
    ids = cases.corpus_ids()
    active_ids = np.unique(ids)

    # Data pipeline: loader variants against today's loader and the reference, whole shuffled epochs.
    rows += data_prototypes(settings, hw, which)

    # Train step: fused optimiser and active vocabulary, against today's step and the reference.
    for batch, length in runner.TRAIN_CASES:
        inputs, targets = cases.train_batch(batch, length, cases.GPT2_VOCAB)
        case = cases.train_case(batch, length, 256, which=which)
        step, state = fused_train_setup(batch, length, 256, cases.GPT2_VOCAB)
        case.impls["fused"] = cases.step_callable(step, state, inputs, targets)
        step, state, k = active_vocab_setup(batch, length, 256, cases.GPT2_VOCAB, active_ids)
        case.impls["active"] = cases.step_callable(step, state, inputs, targets)
        cases.finish_floor(case, hw["bandwidth_Bps"], hw["matmul_flops"]["peak"])
        row = runner.summarize(case, runner.measure(case.impls, settings))
        rows.append(
            _row(
                "fused clip + AdamW (one pass, optax transformation)",
                f"train {batch} x {length}",
                row,
                "fused",
                "yes, to rounding (1e-7)",
                floor_terms=dict(case.floor_terms),
            )
        )
        rows.append(
            _row(
                f"active vocabulary (K = {k:,} of 50,257)",
                f"train {batch} x {length}",
                row,
                "active",
                "no: softmax over the corpus's ids",
                floor_terms={
                    "flops": cases.train_flops(batch, length, 256, k),
                    "bytes": cases.optimizer_bytes(k, length, 256),
                },
            )
        )
        print(
            f"prototype train {batch}x{length}: today {row['jaxembed_s'] * 1e3:.1f} ms, fused "
            f"{row['fused_s'] * 1e3:.1f} ms, active vocab {row['active_s'] * 1e3:.1f} ms"
            + (f", reference {row['reference_s'] * 1e3:.1f} ms" if "reference_s" in row else ""),
            flush=True,
        )

    # What bounds the seed-size step: its parts, alternating.
    parts = step_components(8, 4)
    times = runner.measure(parts, settings)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, t in medians.items():
        rows.append(
            {
                "variant": f"component: {name}",
                "case": "train 8 x 4",
                "step_s": t,
                "exact": "–",
                "today": f"{medians['full step'] * 1e3:.1f} ms (full step)",
                "proto": f"{t * 1e3:.1f} ms",
                "times_s": times[name],
            }
        )
    print("prototype components 8x4: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in medians.items()), flush=True)

    # Settings that must be made before the CPU client starts: one child per variant, alternating.
    spec = {"reps": settings.reps, "which": list(which)}
    child = {name: [] for name in CHILD_VARIANTS}
    for _ in range(2):  # two rounds, alternating the variants
        for name in CHILD_VARIANTS:
            try:
                child[name].append(_run_child(name, spec))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"prototype child {name} failed: {str(e)[-500:]}", flush=True)
    child = {name: results for name, results in child.items() if results}
    base = None
    for name, results in child.items():
        embed = statistics.median(r["embed_8x4"]["jaxembed"] for r in results)
        train = statistics.median(r["train_8x4"]["jaxembed"] for r in results)
        base = base or (embed, train)
        row = {
            "variant": f"process setting: {name}",
            "case": "embed [8, 4] D=256; train 8 x 4",
            "embed_s": embed,
            "train_s": train,
            "exact": "yes",
            "step_s": embed,
            "today": f"{base[0] * 1e6:.0f} µs; {base[1] * 1e3:.1f} ms",
            "proto": f"{embed * 1e6:.0f} µs; {train * 1e3:.1f} ms",
            "speedup_vs_jaxembed": base[0] / embed,
            "train_speedup_vs_jaxembed": base[1] / train,
            "children": results,
        }
        if "reference" in results[0]["embed_8x4"]:
            row["embed_reference_s"] = statistics.median(r["embed_8x4"]["reference"] for r in results)
            row["speedup_vs_reference"] = row["embed_reference_s"] / embed
        rows.append(row)
        print(
            f"prototype child {name}: embed [8,4] {embed * 1e6:.1f} us"
            + (f" (reference {row['embed_reference_s'] * 1e6:.1f} us)" if "embed_reference_s" in row else "")
            + f", train 8x4 {train * 1e3:.1f} ms",
            flush=True,
        )
    return rows


def _row(variant, case_name, row, key, exact, floor_terms=None) -> dict:
    if row["kind"] == "data":
        fmt = lambda t: f"{row['tokens_per_unit'] / t / 1e6:.1f} Mtok/s"  # noqa: E731
    else:
        fmt = lambda t: f"{t * 1e3:.1f} ms"  # noqa: E731
    out = {
        "variant": variant,
        "case": case_name,
        "step_s": row[f"{key}_s"],
        "exact": exact,
        "jaxembed_s": row["jaxembed_s"],
        "speedup_vs_jaxembed": row["jaxembed_s"] / row[f"{key}_s"],
        "today": fmt(row["jaxembed_s"]),
        "proto": fmt(row[f"{key}_s"]),
        "times_s": row["times_s"][key],
    }
    if "reference_s" in row:
        out["reference_s"] = row["reference_s"]
        out["speedup_vs_reference"] = row["reference_s"] / row[f"{key}_s"]
    if floor_terms:  # run.refloor turns these into floor_s and x_floor with the run's best probes
        out["floor_terms"] = floor_terms
    return out


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.prototypes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))), flush=True)
        return 0
    from benchmarks import run as runner

    reference = not args.no_reference and runner.torch_available()
    settings = runner.Settings(
        quick=False,
        reference=reference,
        reps=args.reps,
        warmup=2,
        min_rep_s=0.2,
        out=None,
        memory=False,
        sweep=False,
        prototypes=True,
    )
    hw = runner.hardware(settings)
    rows = run(settings, hw, [])
    print(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
