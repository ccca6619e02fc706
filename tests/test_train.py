"""Training: the schedule, the optimiser step, learning on real text, the data split, errors.

References are independent: a plain-Python warmup + cosine formula, a numpy
AdamW-with-clipping first step, tiktoken decoding of the held-out slice.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed import data, train
from jaxembed.config import CONFIG_DIR, base_config
from jaxembed.nn.losses import cross_entropy
from jaxembed.nn.model import EmbeddingLM
from jaxembed.text import corpus
from jaxembed.text.tokenizer import get_encoding
from jaxembed.train import run as run_lib
from jaxembed.train import trainer
from jaxembed.train.checkpoint import CheckpointError
from jaxembed.train.workdir import WorkdirError

LN_VOCAB = math.log(50257)


def tiny_config(**train_overrides):
    spec = importlib.util.spec_from_file_location("tiny_config", CONFIG_DIR / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for name, value in train_overrides.items():
        config.train[name] = value
    return config


def reference_lr(step: int, *, peak: float, warmup: int, total: int, final_fraction: float) -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup`` steps, then cosine down to the final fraction."""
    end = peak * final_fraction
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))


# --- The schedule ----------------------------------------------------------


@pytest.mark.parametrize(
    "peak, warmup, total, final",
    [
        (2e-2, 20, 300, 0.1),  # configs/tiny.py
        (1e-2, 50, 1000, 0.1),  # configs/default.py
        (3e-3, 7, 40, 0.0),
        (1e-3, 0, 10, 0.5),  # no warmup: starts at the peak
    ],
)
def test_learning_rate_schedule_is_linear_warmup_then_cosine(peak, warmup, total, final):
    optim = base_config().optim
    optim.learning_rate, optim.warmup_steps, optim.final_lr_fraction = peak, warmup, final
    schedule = trainer.learning_rate_schedule(optim, total)
    got = [float(schedule(s)) for s in range(total + 1)]
    want = [reference_lr(s, peak=peak, warmup=warmup, total=total, final_fraction=final) for s in range(total + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=peak * 1e-6)
    assert got[0] == (0.0 if warmup else pytest.approx(peak))
    assert max(got) == pytest.approx(peak) and int(np.argmax(got)) == warmup
    assert got[total] == pytest.approx(peak * final, abs=peak * 1e-6)


# --- The optimiser step ----------------------------------------------------

V, L, D, B = 64, 4, 8, 3


def small_setup(**optim_overrides):
    optim = base_config().optim
    optim.update(optim_overrides)
    lm = EmbeddingLM(vocab_size=V, max_length=L, features=D, init_stddev=0.5)
    tx = trainer.make_optimizer(optim, total_steps=10)
    state = trainer.create_train_state(lm, tx, trainer.make_mesh(), jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = [tuple(jnp.asarray(rng.integers(0, V, size=(B, L)), jnp.int32) for _ in range(2)) for _ in range(3)]
    step = jax.jit(functools.partial(trainer.train_step, model=lm, tx=tx))
    return lm, optim, state, batches, step


def host(tree):
    return jax.tree.map(lambda x: np.array(x), nn.unbox(tree))


def assert_trees_bitwise_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(host(a))
    leaves_b, tree_b = jax.tree.flatten(host(b))
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)


def test_jitted_train_step_is_pure_and_deterministic():
    lm, _, state0, batches, step = small_setup(warmup_steps=1)
    before = host(state0)

    def run():
        state, losses = state0, []
        for x, y in batches:
            state, metrics = step(state, x, y)
            losses.append(metrics)
        return state, losses

    state_a, metrics_a = run()
    state_b, metrics_b = run()
    assert_trees_bitwise_equal(state_a, state_b)
    assert_trees_bitwise_equal(metrics_a, metrics_b)
    assert_trees_bitwise_equal(state0, before)  # the input state was not changed
    assert int(state_a.step) == 3
    assert not np.array_equal(
        host(state_a.params)["params"]["embed"]["token"]["embedding"],
        before.params["params"]["embed"]["token"]["embedding"],
    )

    x, y = batches[0]
    loss, grads = jax.jit(jax.value_and_grad(lambda p: cross_entropy(lm.apply(p, x), y)))(state0.params)
    np.testing.assert_allclose(float(metrics_a[0]["loss"]), float(loss), rtol=1e-6)
    grad_norm = math.sqrt(sum(float(np.sum(np.square(g), dtype=np.float64)) for g in jax.tree.leaves(host(grads))))
    np.testing.assert_allclose(float(metrics_a[0]["grad_norm"]), grad_norm, rtol=1e-5)


@pytest.mark.parametrize("clip", [1e-9, 1e6])
def test_first_step_is_adamw_on_globally_clipped_gradients(clip):
    # With no warmup the first step uses the peak rate. Adam's first step is
    # g / (|g| + eps) per element: clipping the gradient to a tiny global norm
    # (well below eps) shrinks the update in proportion, so removing the
    # clipping would move the parameters by about lr per element instead.
    lr, wd, eps = 1e-2, 0.1, 1e-8
    lm, optim, state0, batches, step = small_setup(warmup_steps=0, learning_rate=lr, weight_decay=wd, grad_clip=clip)
    x, y = batches[0]
    grads = host(jax.jit(jax.grad(lambda p: cross_entropy(lm.apply(p, x), y)))(state0.params))
    params0 = host(state0.params)
    g_norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in jax.tree.leaves(grads)))
    scale = min(1.0, clip / g_norm)
    if clip < 1:
        assert g_norm > 100 * clip  # clipping is active

    def reference(p, g):
        gc = g.astype(np.float64) * scale
        return p - lr * (gc / (np.abs(gc) + eps) + wd * p)

    expected = jax.tree.map(reference, params0, grads)
    state1, _ = step(state0, x, y)
    got = host(state1.params)
    for e, a in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)

    # The bound the clip gives: ||update - decay|| <= lr * clip / eps.
    moved = math.sqrt(
        sum(
            float(np.sum((a - p + lr * wd * p) ** 2, dtype=np.float64))
            for a, p in zip(jax.tree.leaves(got), jax.tree.leaves(params0))
        )
    )
    if clip < 1:
        assert moved <= lr * clip / eps * 1.001
    else:  # unclipped: about lr per element that has a gradient
        with_gradient = sum(int(np.count_nonzero(np.abs(g) > 1e-6)) for g in jax.tree.leaves(grads))
        assert moved > 0.5 * lr * math.sqrt(with_gradient)
        assert moved > 100 * lr * 1e-9 / eps  # 100x what the tiny clip allows


# --- Learning on Romeo and Juliet -----------------------------------------


def test_validation_loss_drops_on_romeo_and_juliet(corpus_path):
    # Measured: 10.825 -> 8.00 after 60 steps (drop 2.8 nats).
    config = tiny_config(steps=60, eval_every=60, log_every=20)
    result = train.train_and_evaluate(config, None, text=corpus_path.read_text(encoding="utf-8"), progress=False)
    assert int(result.state.step) == 60
    assert [m["step"] for m in result.metrics] == [0, 20, 40, 60]
    val = {m["step"]: m["val_loss"] for m in result.metrics if "val_loss" in m}
    assert sorted(val) == [0, 60]
    assert abs(val[0] - LN_VOCAB) < 0.05
    assert val[0] - val[60] > 2.0
    train_losses = [m["train_loss"] for m in result.metrics if "train_loss" in m]
    assert train_losses[-1] < train_losses[0] - 2.0


def test_tiled_loss_trains_the_same_as_dense_logits(corpus_path):
    # 256 tokens per step in tiles of 48 (the last tile partly padding) vs the full logits at once.
    text = corpus_path.read_text(encoding="utf-8")
    runs = {}
    for tile in (0, 48):
        config = tiny_config(steps=20, eval_every=10, log_every=10, checkpoint_every=20)
        config.model.loss_tile_tokens = tile
        runs[tile] = train.train_and_evaluate(config, None, text=text, progress=False).metrics
    dense = [(m["step"], m["val_loss"]) for m in runs[0] if "val_loss" in m]
    tiled = [(m["step"], m["val_loss"]) for m in runs[48] if "val_loss" in m]
    assert [s for s, _ in dense] == [s for s, _ in tiled] == [0, 10, 20]
    assert dense[-1][1] < dense[0][1] - 1.0  # it learned, so the comparison means something
    np.testing.assert_allclose([v for _, v in tiled], [v for _, v in dense], atol=1e-4)


# --- The train / validation split ------------------------------------------


def test_split_holds_out_the_end_of_the_gutenberg_body(corpus_path):
    raw = corpus_path.read_text(encoding="utf-8")
    enc = get_encoding("gpt2")
    config = tiny_config()
    splits = data.splits.split_corpus(raw, val_fraction=config.data.val_fraction)
    body = corpus.strip_gutenberg(raw)
    assert len(body) < len(raw) - 10_000  # the markers were found: a licence was cut

    total = len(splits.train_ids) + len(splits.val_ids)
    assert total == len(enc.encode(body))
    assert len(splits.val_ids) == round(0.1 * total)
    held_out = enc.decode(splits.val_ids.tolist())
    assert enc.decode(splits.train_ids.tolist()) + held_out == body
    assert body.endswith(held_out) and len(held_out) > 10_000
    assert "Gutenberg" not in held_out and "*** END OF" not in held_out
    assert "Gutenberg" not in enc.decode(splits.train_ids[-2000:].tolist())
    # Without stripping, the same slice of the raw text would be mostly licence.
    raw_ids = enc.encode(raw)
    assert "Gutenberg" in enc.decode(raw_ids[-len(splits.val_ids) :])
    assert splits.vocab_size == enc.n_vocab == 50257


def test_split_of_text_without_markers_keeps_everything():
    text = "alpha beta gamma. " * 200
    splits = data.splits.split_corpus(text)
    enc = get_encoding("gpt2")
    assert enc.decode(np.concatenate([splits.train_ids, splits.val_ids]).tolist()) == text


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_bad_val_fraction(fraction):
    config = base_config()
    config.data.val_fraction = fraction
    with pytest.raises(ValueError, match="val_fraction"):
        data.splits.split_corpus("to be or not to be " * 50, val_fraction=config.data.val_fraction)


# --- Errors before any compute ---------------------------------------------


@pytest.mark.parametrize("field, value", [("steps", 0), ("checkpoint_every", -1), ("eval_batches", 0)])
def test_validate_config_names_the_bad_field(field, value):
    config = tiny_config()
    config.train[field] = value
    with pytest.raises(ValueError, match=f"train.{field}"):
        train.train_and_evaluate(config, None, text="x", progress=False)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0])
def test_validate_config_rejects_bad_learning_rate(lr):
    config = tiny_config()
    config.optim.learning_rate = lr
    with pytest.raises(ValueError, match="learning_rate"):
        train.train_and_evaluate(config, None, text="x", progress=False)


@pytest.mark.parametrize("under_file", [True, False])
def test_unwritable_workdir_fails_before_reading_the_corpus(tmp_path, under_file):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    workdir = blocker / "run" if under_file else blocker
    config = tiny_config()
    # A corpus that does not exist: reaching it would raise a different error.
    config.data.text = str(tmp_path / "missing.txt")
    with pytest.raises(WorkdirError, match="cannot be written") as info:
        train.train_and_evaluate(config, workdir, progress=False)
    assert str(workdir) in str(info.value)
    assert blocker.read_text() == "not a directory"


def small_run_config(**train_overrides):
    config = tiny_config(log_every=5, checkpoint_every=10, eval_every=10, eval_batches=1)
    config.data.batch_size, config.data.max_length, config.data.stride = 4, 8, 8
    config.train.update(train_overrides)
    return config


def test_nan_loss_stops_training_and_saves_no_checkpoint(tmp_path, corpus_path):
    config = small_run_config(steps=30)
    config.optim.learning_rate = 1e30
    text = corpus_path.read_text(encoding="utf-8")[:30_000]
    with pytest.raises(train.TrainingError) as info:
        train.train_and_evaluate(config, tmp_path / "run", text=text, progress=False)
    message = str(info.value)
    assert any(f"loss became {v}" in message for v in ("nan", "inf", "-inf")), message
    assert "learning_rate" in message and "1e+30" in message
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not checkpoints.exists() or not any(p.name[0].isdigit() for p in checkpoints.iterdir())
    # The run left a config but no checkpoint: load_run says so.
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_lib.load_run(tmp_path / "run")


def test_diverged_params_are_never_checkpointed(tmp_path, corpus_path):
    # No warmup and an absurd rate: step 1's loss is finite (computed before the
    # update) but its update sends the params to ~1e30, where every loss is NaN.
    config = small_run_config(steps=6, log_every=1, checkpoint_every=1, eval_every=100)
    config.optim.learning_rate, config.optim.warmup_steps = 1e30, 0
    with pytest.raises(train.TrainingError):
        train.train_and_evaluate(
            config, tmp_path / "run", text=corpus_path.read_text(encoding="utf-8")[:30_000], progress=False
        )
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not checkpoints.exists() or not any(p.name[0].isdigit() for p in checkpoints.iterdir())


def test_rerun_of_a_run_killed_before_its_first_checkpoint_logs_step_0_once(tmp_path, corpus_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    # What a run killed at step 7 leaves: rows 0 and 5, a torn row, no checkpoint.
    (workdir / "metrics.jsonl").write_text(
        '{"step": 0, "learning_rate": 0.0, "val_loss": 10.82}\n'
        '{"step": 5, "train_loss": 10.8, "learning_rate": 0.004, "tokens_per_sec": 100.0}\n{"step": 1'
    )
    result = train.train_and_evaluate(
        small_run_config(steps=10), workdir, text=corpus_path.read_text(encoding="utf-8")[:30_000], progress=False
    )
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 5, 10]
    assert logged == result.metrics


def test_load_run_of_a_non_run_directory_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a jaxembed run") as info:
        run_lib.load_run(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # read-only: nothing created


def test_active_vocabulary_trains_only_the_corpus_rows(tmp_path, corpus_path):
    config = small_run_config(steps=60, eval_every=60, checkpoint_every=60)
    config.data.batch_size, config.data.max_length, config.data.stride = 16, 16, 16
    config.model.active_vocab = True
    text = corpus_path.read_text(encoding="utf-8")
    result = train.train_and_evaluate(config, tmp_path / "run", text=text, progress=False)
    # Independent reference: the distinct ids of the tokenized body.
    ids = get_encoding().encode(corpus.strip_gutenberg(text))
    active = np.unique(ids)
    assert result.model.vocab_size == len(active)
    val = [row["val_loss"] for row in result.metrics if "val_loss" in row]
    assert val[0] == pytest.approx(math.log(len(active)), abs=0.05)  # uniform over K ids, not 50,257
    assert val[-1] < val[0] - 0.5
    token_VxD, _ = result.tables()
    before_VxD, _ = result.tables(initial=True)
    assert token_VxD.shape == (50257, config.model.features)
    inactive = np.setdiff1d(np.arange(50257), active)
    assert not token_VxD[inactive].any()
    assert np.all(np.abs(token_VxD[active] - before_VxD[active]).sum(axis=1) > 0)  # every corpus row moved
    run = run_lib.load_run(tmp_path / "run")  # the workdir remembers the mapping
    np.testing.assert_array_equal(run.token_VxD, token_VxD)


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_weight_decay_shrinks_matrices_not_biases_or_norms(decay_embeddings):
    # Zero gradients: Adam's part of the update is 0, so what moves is the decay alone.
    config = base_config()
    config.optim.weight_decay, config.optim.warmup_steps = 0.1, 0
    config.optim.decay_embeddings = decay_embeddings
    model = EmbeddingLM(vocab_size=50, max_length=4, features=8, num_layers=1, num_heads=2)
    params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))
    tx = trainer.make_optimizer(config.optim, total_steps=10)
    grads = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)  # one program, not one per eager op
    factor = -config.optim.learning_rate * config.optim.weight_decay
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    moved = {}
    for (path, p), u in zip(flat, jax.tree.leaves(updates)):
        name = jax.tree_util.keystr(path)
        moved[name] = not np.allclose(u, 0)
        if moved[name]:
            np.testing.assert_allclose(u, factor * np.asarray(p), rtol=1e-5)
    kernels = [n for n in moved if "kernel" in n]
    assert kernels and all(moved[n] for n in kernels)
    assert not any(moved[n] for n in moved if "bias" in n or "scale" in n)
    tables = [n for n in moved if "embedding" in n]
    assert len(tables) == 2 and all(moved[n] == decay_embeddings for n in tables)
