"""The measured cases: jaxembed and the PyTorch reference, one unit of work each.

Every ``*_case`` function returns a ``harness.Case``: for each implementation
a zero-argument callable that does one unit of work synchronously (one epoch,
one forward pass, one train step) plus what that unit is worth (tokens,
bytes, FLOPs) so that the harness can turn medians into throughputs and
floors. Setup (tokenizing, building the reference's dataset, initialising
parameters, compiling) happens here, outside any timing. jaxembed's train
step is always ``jaxembed.train.trainer.Trainer``'s compiled step
(``harness.jax_step``), the one ``jaxembed train`` runs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np

from benchmarks import harness
from benchmarks.harness import GPT2_VOCAB, Case


def _torch():
    import torch

    torch.set_num_threads(harness.threads())
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
                inputs, _ = next(iterator)
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
            batch_count = 0
            for _ in loader_t:
                batch_count += 1
            return batch_count

        impls["reference"] = torch_epoch
    # Minimal traffic: read each window's L+1 ids, write inputs and targets (int32).
    floor_bytes = batches * batch * (max_length + 1 + 2 * max_length) * 4
    return Case(
        "data",
        f"L={max_length} S={stride} B={batch}",
        {"max_length": max_length, "stride": stride, "batch": batch},
        impls,
        batches * batch * max_length,
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
    ids_BxL = np.random.default_rng(0).integers(0, vocab, (batch, length)).astype(np.int32)
    impls = {}
    if "jaxembed" in which:
        import jax
        import jax.numpy as jnp

        from jaxembed.nn.embeddings import InputEmbedding

        embed = InputEmbedding(vocab_size=vocab, max_length=length, features=features)
        ids = jnp.asarray(ids_BxL)
        # One compilation (not one per op), and wait for it: dispatch is asynchronous.
        params = jax.block_until_ready(jax.jit(embed.init)(jax.random.key(0), ids))
        apply = jax.jit(embed.apply)
        impls["jaxembed"] = lambda: apply(params, ids).block_until_ready()
    if "reference" in which:
        from benchmarks import torch_reference as tr

        torch = _torch()
        module = tr.make_input_embedding(vocab, length, features)
        ids_t = torch.from_numpy(ids_BxL.astype(np.int64))

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
        {"bytes": floor_bytes},
    )


# --- (3) Train step -----------------------------------------------------------


#: The PyTorch implementations of the train step: name -> (AdamW ``fused``, ``torch.compile`` the loss).
#: ``reference``: the seed's users' PyTorch (defaults); ``reference_fused``: PyTorch's fastest CPU
#: AdamW; ``reference_compiled``: what a PyTorch user after speed picks, the loss through
#: ``torch.compile`` (inductor) and fused AdamW.
REFERENCES = {"reference": (None, False), "reference_fused": (True, False), "reference_compiled": (True, True)}


def train_case(
    batch: int,
    length: int,
    features: int,
    which=("jaxembed", "reference", "reference_fused"),
    vocab: int = GPT2_VOCAB,
    jax_step: Callable[[], object] | None = None,
    overrides: dict | None = None,
    variants: dict[str, dict] | None = None,
    num_layers: int = 0,
    num_heads: int = 1,
) -> Case:
    """One optimiser step (forward, backward, clipping, AdamW) of the tied model.

    jaxembed: ``Trainer.from_config(base_config() at these sizes).step``:
    compiled ahead of time with the state's shardings and donated, the batch
    placed once, blocking on the new state. Reference: the same model in PyTorch
    (``torch_reference.make_embedding_lm``, ``num_layers`` attention blocks of
    ``num_heads`` heads), one implementation per name of ``REFERENCES`` in ``which``.
    ``jax_step`` is a ready ``harness.jax_step`` for this case (built elsewhere);
    ``overrides`` are ``{"section.field": value}`` config changes for jaxembed.
    ``variants`` (``{"jaxembed_NAME": overrides}``) adds jaxembed's step with
    other settings as further implementations, measured alternating with the
    rest; each variant's first loss (from the same initial state and batch)
    is in ``extra["first_loss"]``.
    """
    overrides = {**(overrides or {}), **_layer_overrides(num_layers, num_heads)}
    config = harness.make_config(batch, length, features, overrides)
    impls = {}
    extra: dict = {"num_layers": num_layers, "num_heads": num_heads}
    if "jaxembed" in which:
        impls["jaxembed"] = jax_step or harness.jax_step(batch, length, features, vocab, overrides)
        for name, variant in (variants or {}).items():
            if not name.startswith("jaxembed_"):
                raise ValueError(f"variants: {name!r} must start with 'jaxembed_' (a jaxembed implementation).")
            impls[name] = harness.jax_step(batch, length, features, vocab, {**overrides, **variant})
        extra["first_loss"] = {name: getattr(fn, "first_loss", None) for name, fn in impls.items()}
        extra["overrides"] = {"jaxembed": overrides, **{n: {**overrides, **v} for n, v in (variants or {}).items()}}
    if any(name in which for name in REFERENCES):
        from benchmarks import torch_reference as tr

        torch = _torch()
        inputs_t, targets_t = (torch.from_numpy(a.astype(np.int64)) for a in harness.train_batch(batch, length, vocab))
        for name, (fused, compiled) in REFERENCES.items():
            if name not in which:
                continue
            torch.manual_seed(config.seed)
            model = tr.make_embedding_lm(vocab, length, features, config.model.init_stddev, num_layers, num_heads)
            opt, scheduler = tr.make_optimizer(model, config.optim, config.train.steps, fused=fused)
            loss_fn = tr.make_loss(model, compiled=compiled)
            impls[name] = functools.partial(
                tr.train_step, model, opt, scheduler, inputs_t, targets_t, config.optim.grad_clip, loss_fn
            )
            if compiled:  # inductor compiles on the first call (tens of seconds): outside every timing
                start = time.perf_counter()
                impls[name]()
                extra[f"{name}_compile_s"] = time.perf_counter() - start
    layers = f" layers={num_layers} heads={num_heads}" if num_layers else ""
    return Case(
        "train",
        f"B={batch} L={length} D={features}{layers} V={vocab:,}",
        {"batch": batch, "length": length, "features": features, "vocab": vocab},
        impls,
        batch * length,
        {
            "flops": harness.train_flops(batch, length, features, vocab),
            "bytes": harness.optimizer_bytes(vocab, length, features),
        },
        extra,
    )


def _layer_overrides(num_layers: int, num_heads: int) -> dict:
    return {"model.num_layers": num_layers, "model.num_heads": num_heads} if num_layers else {}


# --- Equivalence: the reference computes what jaxembed computes ---------------------


def equivalence(
    steps: int = 3,
    batch: int = 4,
    length: int = 8,
    features: int = 16,
    vocab: int = 300,
    num_layers: int = 0,
    num_heads: int = 1,
) -> dict:
    """Runs jaxembed's ``Trainer`` and the reference from the same parameters on the same batches.

    Returns the largest differences of the input embeddings, the losses and
    the trained tables after ``steps`` AdamW steps (all should be ~1e-6).
    With ``num_layers``, the attention blocks' weights are copied too.
    Needs torch.
    """
    import jax
    import torch

    from benchmarks import torch_reference as tr
    from jaxembed.nn.embeddings import InputEmbedding

    torch.set_num_threads(harness.threads())
    overrides = {"optim.warmup_steps": 1, **_layer_overrides(num_layers, num_heads)}
    config = harness.make_config(batch, length, features, overrides)
    trainer = harness.make_trainer(config, vocab)
    state = trainer.init(jax.random.key(config.seed))
    embed_params = state.params["params"]["embed"]
    tok0 = np.array(embed_params["token"]["embedding"])[:vocab]
    pos0 = np.array(embed_params["position"]["embedding"])
    model = tr.make_embedding_lm(vocab, length, features, num_layers=num_layers, num_heads=num_heads)
    with torch.no_grad():
        model.token.weight.copy_(torch.from_numpy(tok0))
        model.position.weight.copy_(torch.from_numpy(pos0))
        for i, block in enumerate(model.blocks):
            _copy_block(block, state.params["params"][f"block_{i}"], features)
    opt, scheduler = tr.make_optimizer(model, config.optim, config.train.steps)
    rng = np.random.default_rng(0)
    loss_diff = 0.0
    for _ in range(steps):
        ids = rng.integers(0, vocab, (batch, length + 1)).astype(np.int32)
        x, y = ids[:, :-1], ids[:, 1:]
        state, metrics = trainer.step(state, *(jax.device_put(a, trainer.batch_sharding) for a in (x, y)))
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
    embed = tr.make_input_embedding(vocab, length, features)
    ids = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    with torch.no_grad():
        embed.token.weight.copy_(torch.from_numpy(tok))
        embed.position.weight.copy_(torch.from_numpy(pos))
        h_torch = embed(torch.from_numpy(ids.astype(np.int64))).numpy()
    h_jax = np.asarray(
        InputEmbedding(vocab, length, features).apply(
            {"params": {"token": {"embedding": tok}, "position": {"embedding": pos}}}, ids
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


def _copy_block(block, params: dict, features: int) -> None:
    """A jaxembed ``CausalSelfAttentionBlock``'s weights into the reference's ``Block`` (fused q/k/v)."""
    import torch

    def host(x):
        return np.array(x, np.float32)  # a writable copy: torch.from_numpy warns on read-only arrays

    attention = params["attention"]
    # Flax kernels are [D, H, K] (query, key, value) and [H, K, D] (out): x @ W; torch's Linear is x @ W.T.
    qkv = np.concatenate(
        [host(attention[n]["kernel"]).reshape(features, features) for n in ("query", "key", "value")], 1
    )
    block.qkv.weight.copy_(torch.from_numpy(qkv.T.copy()))
    block.qkv.bias.copy_(
        torch.from_numpy(np.concatenate([host(attention[n]["bias"]).ravel() for n in ("query", "key", "value")]))
    )
    block.out.weight.copy_(torch.from_numpy(host(attention["out"]["kernel"]).reshape(features, features).T.copy()))
    block.out.bias.copy_(torch.from_numpy(host(attention["out"]["bias"])))
    block.norm.weight.copy_(torch.from_numpy(host(params["norm"]["scale"])))
    block.norm.bias.copy_(torch.from_numpy(host(params["norm"]["bias"])))
