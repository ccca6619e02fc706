"""Prototype optimisations for jaxembed, measured against the library as it is.

Each prototype imports jaxembed's pieces and changes one thing; ``run``
measures it alternating with jaxembed as it is (and with the reference where
torch is present) and returns a row for each, paying or not. Only
prototypes that still answer an open question live here:

* ``FastLoader``: ``create_dataloader(num_workers=0)``'s batches, chunks and
  iterator state without Grain's per-element iterator (is Grain in-process
  worth its cost per chunk?).
* ``fused_adamw_transformation``: global-norm clipping + AdamW as one
  elementwise pass, compiled by ``jaxembed.train.trainer.Trainer`` in place of
  ``make_optimizer``'s chain (is a custom optimiser worth its state layout?).
* ``step_components``: the seed-size step's parts alone (what bounds it?).

``python -m benchmarks.prototypes`` runs them on their own.
"""

from __future__ import annotations

import pathlib
import statistics
import sys
from typing import Any, NamedTuple

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import cases, harness  # noqa: E402

#: (max_length, stride, batch) of the loader prototypes: the data section's cases.
DATA_CASES = [(4, 4, 8), (256, 128, 8), (256, 1, 64), (1024, 512, 32)]
#: (batch, length) of the train-step prototypes, 256 wide, GPT-2 vocabulary.
TRAIN_CASES = [(8, 4), (16, 64)]

# --- Data: an in-process loader without Grain's per-element cost -----------------------


class FastLoader:
    """Iterates ``jaxembed.data.windows.WindowBatches`` in-process: no Grain, one gather per chunk.

    Yields exactly the batches ``create_dataloader(num_workers=0)`` yields
    (same order, same values), from the same chunks (``data.loader.CHUNK_TOKENS``
    tokens, the chunks of ``data.WindowBatchChunks``), but without Grain's
    per-element iterator: each chunk is gathered and split into contiguous
    inputs and targets once, and batches are row slices of those. Its
    iterator's state is the dict ``data.Unbatch``'s iterator uses, so either
    restores the other's checkpoints. ``views=True`` copies each window's
    ``L + 1`` ids once and returns inputs and targets as two overlapping
    (non-contiguous) views of that copy: the same values with half the bytes
    written, but writing into ``inputs`` changes ``targets``.

    Example:
      >>> import numpy as np
      >>> from jaxembed import data
      >>> src = data.window_batches(np.arange(100), batch_size=8, max_length=4, stride=4,
      ...                           shuffle=False, shard_index=0, shard_count=1)
      >>> it = iter(FastLoader(src)); x, y = next(it); it.get_state()
      {'chunk_start': {'next_index': 0}, 'batches_taken': 1}
    """

    def __init__(self, source, chunk_tokens: int | None = None, views: bool = False):
        from jaxembed import data

        self.source, self.views = source, views
        chunk_tokens = data.loader.CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
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


def data_prototypes(settings: harness.Settings, hw: dict, which: tuple[str, ...]) -> list[dict]:
    """FastLoader and its views variant against today's loader (and the reference), whole epochs."""
    ids = harness.corpus_ids()
    rows = []
    for max_length, stride, batch in DATA_CASES:
        case = cases.data_case(ids, max_length, stride, batch, which=which)
        per_epoch = case.extra["batches"]
        variants = {
            "fast": iter(fast_dataloader(ids, batch, max_length, stride, num_epochs=None)),
            "views": iter(fast_dataloader(ids, batch, max_length, stride, num_epochs=None, views=True)),
        }
        for key, it in variants.items():

            def epoch(it=it, per_epoch=per_epoch):
                for _ in range(per_epoch):
                    next(it)

            case.impls[key] = epoch
        harness.finish_floor(case, hw["bandwidth_Bps"], hw["matmul_flops"]["peak"])
        row = harness.summarise(case, harness.measure(case.impls, settings))
        name = f"data ({max_length}, {stride}, {batch})"
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
        views_bytes = per_epoch * batch * 2 * (max_length + 1) * 4  # read and write L+1 ids
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
            f"prototype data {case.name}: today {row['jaxembed_tokens_per_s'] / 1e6:.1f} Mtok/s, FastLoader "
            f"{row['fast_tokens_per_s'] / 1e6:.1f} (views {row['views_tokens_per_s'] / 1e6:.1f})"
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

    from jaxembed.train.trainer import learning_rate_schedule

    schedule = learning_rate_schedule(optim, total_steps)
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

    A drop-in for ``jaxembed.train.trainer.make_optimizer``: ``Trainer(model, tx, ...)``
    compiles ``train_step`` with it unchanged (``tx.update`` then ``optax.apply_updates``), and XLA
    fuses the final addition into the same elementwise pass.
    """
    import optax

    init, update = fused_clip_adamw(optim, total_steps)
    return optax.GradientTransformation(init, update)


def fused_step(batch: int, length: int, features: int = 256, vocab: int = harness.GPT2_VOCAB):
    """``harness.jax_step`` with ``fused_adamw_transformation`` as the Trainer's optimiser."""
    config = harness.make_config(batch, length, features)
    return harness.jax_step(
        batch, length, features, vocab, tx=fused_adamw_transformation(config.optim, config.train.steps)
    )


def step_components(batch: int, length: int, features: int = 256, vocab: int = harness.GPT2_VOCAB) -> dict:
    """Zero-argument callables for the parts of jaxembed's step, to see what bounds it.

    ``full step`` (the ``Trainer``'s compiled step), ``forward`` (logits and
    loss), ``forward + backward`` (``value_and_grad``, the gradient written
    to a fresh buffer), ``optax clip + AdamW`` and ``fused clip + AdamW``
    (each alone, on a fixed gradient, state donated).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jaxembed.nn.losses import cross_entropy

    config = harness.make_config(batch, length, features)
    trainer = harness.make_trainer(config, vocab)
    model, tx = trainer.model, trainer.tx
    x, y = (jnp.asarray(a) for a in harness.train_batch(batch, length, vocab))
    state = trainer.init(jax.random.key(config.seed))
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

    init, update = fused_clip_adamw(config.optim, config.train.steps)

    def fused_update(g, p, opt_state):
        updates, opt_state = update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    optax_fn = jax.jit(optax_update, donate_argnums=(1, 2))
    fused_fn = jax.jit(fused_update, donate_argnums=(1, 2))
    box = {
        "optax": (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state.opt_state)),
        "fused": (jax.tree.map(jnp.copy, params), init(params)),
    }

    def run(key, fn):
        def go():
            p, o = box[key]
            box[key] = fn(grads, p, o)
            jax.block_until_ready(box[key])

        return go

    return {
        "full step": harness.step_callable(trainer, *harness.train_batch(batch, length, vocab), seed=config.seed),
        "forward": lambda: jax.block_until_ready(forward(params)),
        "forward + backward": lambda: jax.block_until_ready(grad_fn(params)),
        "optax clip + AdamW alone": run("optax", optax_fn),
        "fused clip + AdamW alone": run("fused", fused_fn),
    }


# --- The measurements ---------------------------------------------------------------------


def run(settings: harness.Settings, hw: dict) -> list[dict]:
    """Measures every prototype; returns table rows (variant, case, step_s, speedups, exact)."""
    which = ("jaxembed", "reference") if settings.reference else ("jaxembed",)
    rows = data_prototypes(settings, hw, which)
    for batch, length in TRAIN_CASES:
        case = cases.train_case(batch, length, 256, which=which)
        case.impls["fused"] = fused_step(batch, length)
        harness.finish_floor(case, hw["bandwidth_Bps"], hw["matmul_flops"]["peak"])
        row = harness.summarise(case, harness.measure(case.impls, settings))
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
        print(
            f"prototype train {batch}x{length}: today {row['jaxembed_s'] * 1e3:.1f} ms, fused "
            f"{row['fused_s'] * 1e3:.1f} ms"
            + (f", reference {row['reference_s'] * 1e3:.1f} ms" if "reference_s" in row else ""),
            flush=True,
        )
    times = harness.measure(step_components(8, 4), settings)
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
    if floor_terms:  # harness.refloor turns these into floor_s and x_floor with the run's best probes
        out["floor_terms"] = floor_terms
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.prototypes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args(argv)
    settings = harness.Settings(reference=not args.no_reference and harness.torch_available(), reps=args.reps)
    rows = run(settings, harness.hardware(settings))
    print(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
