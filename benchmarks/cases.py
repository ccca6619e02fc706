"""The measured cases: jaxembed and the PyTorch reference, one unit of work each.

Every ``*_case`` function returns a ``Case``: for each implementation a
zero-argument callable that does one unit of work synchronously (one epoch,
one forward pass, one train step) plus what that unit is worth (tokens,
bytes, FLOPs) so that ``run.py`` can turn medians into throughputs and
floors. Setup (tokenizing, building the reference's dataset, initialising
parameters, compiling) happens here, outside any timing.

Floors (the hardware's limit for one unit) come from two probes measured in
the same run: ``memory_bandwidth`` (a large numpy copy) and
``matmul_throughput`` (float32 matmuls in numpy and XLA, the faster counts).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable

import numpy as np

#: The seed's corpus: Project Gutenberg eBook #1513 (kept outside the repo).
CORPUS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "romeo_juliet_gutenberg.txt"
)
GPT2_VOCAB = 50257
O200K_VOCAB = 200019  # tiktoken's o200k_base n_vocab


def threads() -> int:
    """CPU cores this process may run on: XLA's CPU client sizes its pool to this."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclasses.dataclass
class Case:
    """One benchmark case: a unit of work per implementation and what it is worth."""

    kind: str  # "data", "embed", "train"
    name: str  # e.g. "L=4 S=4 B=8"
    params: dict
    impls: dict[str, Callable[[], object]]  # implementation -> one unit of work
    tokens: int  # tokens per unit (throughputs)
    floor_s: float  # the hardware's lower bound for one unit
    floor_terms: dict  # how the floor is made up
    extra: dict = dataclasses.field(default_factory=dict)


# --- Hardware probes --------------------------------------------------------


def _best_time(fn: Callable[[], object], reps: int) -> float:
    """The fastest of ``reps`` timed calls (after one warm-up): what the hardware can do."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def memory_bandwidth(mib: int = 256, reps: int = 7) -> float:
    """Bytes per second of a large numpy copy (best of ``reps``), counting bytes read plus written."""
    src = np.ones(mib << 18, np.float32)  # mib MiB
    dst = np.empty_like(src)
    seconds = _best_time(lambda: np.copyto(dst, src), reps)
    return 2 * src.nbytes / seconds


def matmul_throughput(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """FLOP/s of an ``n x n`` float32 matmul (best of ``reps``): numpy (BLAS) and jitted XLA."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    numpy_rate = flops / _best_time(lambda: a @ a, reps)
    a_dev = jnp.asarray(a)
    mm = jax.jit(lambda x: x @ x)
    xla_rate = flops / _best_time(lambda: mm(a_dev).block_until_ready(), reps)
    return {"numpy": numpy_rate, "xla": xla_rate, "peak": max(numpy_rate, xla_rate)}


# --- Inputs -------------------------------------------------------------------


@functools.cache
def corpus_ids(max_tokens: int | None = None) -> np.ndarray:
    """The seed's corpus tokenized once with GPT-2 (int32), optionally cut short."""
    from jaxembed import data

    with open(CORPUS, encoding="utf-8") as f:
        ids = data.tokenize(f.read())
    return ids if max_tokens is None else ids[:max_tokens]


def _torch():
    import torch

    torch.set_num_threads(threads())
    return torch


# --- (1) Data pipeline --------------------------------------------------------


def data_case(ids: np.ndarray, max_length: int, stride: int, batch: int, which=("jaxembed", "reference")) -> Case:
    """One shuffled epoch of ``(inputs, targets)`` batches over ``ids``.

    Both loaders are built once, outside the timing, as a training loop
    would build them (their construction times are reported as
    ``jaxembed_build_s`` and ``reference_build_s``). A jaxembed unit draws
    the next epoch's worth of batches from one ``create_dataloader(...,
    num_epochs=None)`` iterator (each unit is exactly one epoch, freshly
    shuffled); a reference unit iterates the ``DataLoader`` once (a fresh
    ``RandomSampler`` permutation per epoch, as PyTorch does).
    """
    from jaxembed import data

    windows = data.num_windows(len(ids), max_length, stride)
    batches = windows // batch
    impls = {}
    extra = {"windows": windows, "batches": batches}
    if "jaxembed" in which:
        start = time.perf_counter()
        loader = data.create_dataloader(
            ids,
            batch_size=batch,
            max_length=max_length,
            stride=stride,
            shuffle=True,
            drop_last=True,
            seed=0,
            num_epochs=None,
            shard_index=0,
            shard_count=1,
        )
        iterator = iter(loader)
        extra["jaxembed_build_s"] = time.perf_counter() - start

        def jax_epoch():
            for _ in range(batches):
                inputs, targets = next(iterator)
            return inputs

        impls["jaxembed"] = jax_epoch
    if "reference" in which:
        from benchmarks import torch_reference as tr

        torch = _torch()
        start = time.perf_counter()
        dataset = tr.GPTDatasetV1(None, tr.PreTokenized(ids), max_length, stride)
        loader_t = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
        extra["reference_build_s"] = time.perf_counter() - start

        def torch_epoch():
            for inputs, targets in loader_t:
                pass
            return inputs

        impls["reference"] = torch_epoch
    tokens = batches * batch * max_length
    # Minimal traffic: read each window's L+1 ids, write inputs and targets (int32).
    floor_bytes = batches * batch * (max_length + 1 + 2 * max_length) * 4
    return Case(
        "data",
        f"L={max_length} S={stride} B={batch}",
        {"max_length": max_length, "stride": stride, "batch": batch},
        impls,
        tokens,
        0.0,
        {"bytes": floor_bytes},
        extra,
    )


# --- (2) InputEmbedding forward -------------------------------------------------


def embed_case(
    batch: int, length: int, features: int, which=("jaxembed", "reference"), vocab: int = GPT2_VOCAB
) -> Case:
    """``InputEmbedding`` forward on ``[batch, length]`` ids into a ``[vocab, features]`` table.

    jaxembed: ``jax.jit(embed.apply)`` on device-resident ids, blocking on
    every call. Reference: eager ``torch.nn.Embedding`` pair under
    ``torch.no_grad()``. Both allocate a fresh ``[B, L, D]`` output per call.
    """
    rng = np.random.default_rng(0)
    ids_np = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    impls = {}
    if "jaxembed" in which:
        import jax
        import jax.numpy as jnp

        from jaxembed.modules import InputEmbedding

        embed = InputEmbedding(vocab_size=vocab, max_length=length, features=features)
        ids = jnp.asarray(ids_np)
        # One compilation (not one per op), and wait for it: dispatch is asynchronous.
        params = jax.block_until_ready(jax.jit(embed.init)(jax.random.key(0), ids))
        apply = jax.jit(embed.apply)
        impls["jaxembed"] = lambda: apply(params, ids).block_until_ready()
    if "reference" in which:
        from benchmarks import torch_reference as tr

        torch = _torch()
        module = tr.make_input_embedding(vocab, length, features)
        ids_t = torch.from_numpy(ids_np.astype(np.int64))

        def torch_forward():
            with torch.no_grad():
                return module(ids_t)

        impls["reference"] = torch_forward
    # Read the looked-up rows and the positions, write the output (float32).
    floor_bytes = (2 * batch * length + length) * features * 4
    return Case(
        "embed",
        f"ids [{batch}, {length}], D={features}",
        {"batch": batch, "length": length, "features": features, "vocab": vocab},
        impls,
        batch * length,
        0.0,
        {"bytes": floor_bytes},
    )


# --- (3) Train step -----------------------------------------------------------


def train_flops(batch: int, length: int, features: int, vocab: int) -> float:
    """Matmul FLOPs of one step of the tied model: logits, d(h), d(table)."""
    return 3 * 2 * batch * length * features * vocab


def optimizer_bytes(vocab: int, length: int, features: int, itemsize: int = 4) -> float:
    """AdamW's traffic: read param, grad, mu, nu and write param, mu, nu."""
    return 7 * (vocab + length) * features * itemsize


def make_config(batch: int, length: int, features: int, overrides: dict | None = None):
    """``jaxembed.config.base_config()`` at these sizes, with ``{"section.field": value}`` overrides."""
    from jaxembed.config import base_config

    config = base_config()
    config.data.max_length, config.data.batch_size, config.model.features = length, batch, features
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def jax_train_setup(batch: int, length: int, features: int, vocab: int, config_overrides: dict | None = None):
    """jaxembed's step as ``train_and_evaluate`` builds it: ``(step_fn, state, config)``.

    ``step_fn(state, inputs, targets) -> (state, metrics)`` is jitted with
    the state donated.
    """
    import jax

    from jaxembed import train

    config = make_config(batch, length, features, config_overrides)
    model = train.make_model(config, vocab)
    tx = train.make_optimizer(config.optim, config.train.steps)
    state = train.create_train_state(model, tx, train.make_mesh(), jax.random.key(config.seed))
    step = jax.jit(functools.partial(train.train_step, model=model, tx=tx), donate_argnums=0)
    return step, jax.block_until_ready(state), config


def jax_step_fn(batch, length, features, vocab, inputs_np, targets_np, config_overrides=None):
    """A zero-argument callable doing one jaxembed train step (state kept inside)."""
    step, state, _ = jax_train_setup(batch, length, features, vocab, config_overrides)
    return step_callable(step, state, inputs_np, targets_np)


def step_callable(step, state, inputs_np, targets_np) -> Callable[[], object]:
    """A zero-argument callable running ``step`` on a fixed batch, keeping the state inside."""
    import jax
    import jax.numpy as jnp

    inputs, targets = jnp.asarray(inputs_np), jnp.asarray(targets_np)
    box = {"state": state}

    def one_step():
        box["state"], metrics = step(box["state"], inputs, targets)
        jax.block_until_ready(box["state"])
        return metrics

    return one_step


def train_batch(batch: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed ``(inputs, targets)`` batch: corpus windows when the vocabulary is GPT-2's."""
    if vocab == GPT2_VOCAB:
        ids = corpus_ids()
    else:
        ids = np.random.default_rng(1).integers(0, vocab, batch * (length + 1) + 1).astype(np.int32)
    starts = np.arange(batch) * length
    spans = np.stack([ids[s : s + length + 1] for s in starts])
    return np.ascontiguousarray(spans[:, :-1]), np.ascontiguousarray(spans[:, 1:])


def train_case(
    batch: int,
    length: int,
    features: int,
    which=("jaxembed", "reference", "reference_fused"),
    vocab: int = GPT2_VOCAB,
    jax_step: Callable[[], object] | None = None,
) -> Case:
    """One optimiser step (forward, backward, clipping, AdamW) of the tied model.

    jaxembed: ``jaxembed.train.train_step`` jitted with the state donated,
    inputs on device, blocking on the new state. Reference: the seed-style
    PyTorch step with ``torch.optim.AdamW`` as PyTorch defaults it
    (``reference``) and with ``fused=True`` (``reference_fused``).
    ``jax_step`` is a ready ``jax_step_fn`` for this case (built elsewhere).
    """
    from jaxembed.config import base_config

    config = base_config()
    inputs_np, targets_np = train_batch(batch, length, vocab)
    impls = {}
    if "jaxembed" in which:
        impls["jaxembed"] = jax_step or jax_step_fn(batch, length, features, vocab, inputs_np, targets_np)
    variants = {"reference": None, "reference_fused": True}
    if any(name in which for name in variants):
        from benchmarks import torch_reference as tr

        torch = _torch()
        inputs_t, targets_t = (torch.from_numpy(x.astype(np.int64)) for x in (inputs_np, targets_np))
        for name, fused in variants.items():
            if name not in which:
                continue
            torch.manual_seed(config.seed)
            model = tr.make_embedding_lm(vocab, length, features, config.model.init_stddev)
            opt, scheduler = tr.make_optimizer(model, config.optim, config.train.steps, fused=fused)
            impls[name] = functools.partial(
                tr.train_step, model, opt, scheduler, inputs_t, targets_t, config.optim.grad_clip
            )
    flops = train_flops(batch, length, features, vocab)
    return Case(
        "train",
        f"B={batch} L={length} D={features} V={vocab:,}",
        {"batch": batch, "length": length, "features": features, "vocab": vocab},
        impls,
        batch * length,
        0.0,
        {"flops": flops, "bytes": optimizer_bytes(vocab, length, features)},
    )


def warm_step(batch: int, length: int, features: int, vocab: int) -> Callable[[], object]:
    """``jax_step_fn`` on this case's batch, already compiled (one step taken)."""
    step = jax_step_fn(batch, length, features, vocab, *train_batch(batch, length, vocab))
    step()
    return step


def finish_floor(case: Case, bandwidth: float, flops_rate: float) -> Case:
    """Fills ``case.floor_s`` from the measured bandwidth and matmul throughput."""
    terms = case.floor_terms
    terms["memory_s"] = terms.get("bytes", 0) / bandwidth
    terms["compute_s"] = terms.get("flops", 0) / flops_rate
    # The matmuls and the optimiser's sweep are separate phases of a step, so
    # their floors add (a perfect overlap would at most halve the sum).
    case.floor_s = terms["memory_s"] + terms["compute_s"]
    return case


# --- Equivalence: the reference computes what jaxembed computes ---------------------


def equivalence(steps: int = 3, batch: int = 4, length: int = 8, features: int = 16, vocab: int = 300) -> dict:
    """Runs jaxembed and the reference from the same parameters on the same batches.

    Returns the largest differences of the input embeddings, the losses and
    the trained tables after ``steps`` AdamW steps (all should be ~1e-6).
    """
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks import torch_reference as tr

    torch.set_num_threads(threads())
    step, state, config = jax_train_setup(batch, length, features, vocab, {"optim.warmup_steps": 1})
    params = jax.tree.map(np.asarray, state.params)["params"]["embed"]
    tok0, pos0 = np.array(params["token"]["embedding"][:vocab]), np.array(params["position"]["embedding"])
    model = tr.make_embedding_lm(vocab, length, features)
    with torch.no_grad():
        model.token.weight.copy_(torch.from_numpy(tok0))
        model.position.weight.copy_(torch.from_numpy(pos0))
    opt, scheduler = tr.make_optimizer(model, config.optim, config.train.steps)
    rng = np.random.default_rng(0)
    loss_diff = 0.0
    for _ in range(steps):
        ids = rng.integers(0, vocab, (batch, length + 1)).astype(np.int32)
        x, y = ids[:, :-1], ids[:, 1:]
        state, metrics = step(state, jnp.asarray(x), jnp.asarray(y))
        loss_t, _ = tr.train_step(
            model,
            opt,
            scheduler,
            torch.from_numpy(x.astype(np.int64)),
            torch.from_numpy(y.astype(np.int64)),
            config.optim.grad_clip,
        )
        loss_diff = max(loss_diff, abs(float(metrics["loss"]) - float(loss_t)))
    tok = np.array(state.params["params"]["embed"]["token"]["embedding"])[:vocab]
    pos = np.array(state.params["params"]["embed"]["position"]["embedding"])
    from jaxembed.modules import InputEmbedding

    embed = tr.make_input_embedding(vocab, length, features)
    with torch.no_grad():
        embed.token.weight.copy_(torch.from_numpy(tok))
        embed.position.weight.copy_(torch.from_numpy(pos))
        ids = rng.integers(0, vocab, (batch, length)).astype(np.int32)
        h_torch = embed(torch.from_numpy(ids.astype(np.int64))).numpy()
    h_jax = np.asarray(
        InputEmbedding(vocab, length, features).apply(
            {"params": {"token": {"embedding": tok}, "position": {"embedding": pos}}}, jnp.asarray(ids)
        )
    )
    return {
        "steps": steps,
        "loss_max_abs_diff": loss_diff,
        "token_table_max_abs_diff": float(np.abs(tok - model.token.weight.detach().numpy()).max()),
        "position_table_max_abs_diff": float(np.abs(pos - model.position.weight.detach().numpy()).max()),
        "table_moved": float(np.abs(tok - tok0).max()),
        "input_embedding_max_abs_diff": float(np.abs(h_torch - h_jax).max()),
    }
