"""``jaxembed.train.plan`` and ``jaxembed plan``: sizes by hand, XLA's memory figures, loop-corrected FLOPs.

References are independent: parameter counts from the module sizes, AdamW's state from its
definition, FLOPs from the closed-form matmul counts (2 * M * N * K), tokens per epoch from a
plain-Python split of the tiktoken ids. gpt2_small is compiled, never run (about 10 s in all).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxembed import cli
from jaxembed.config import named_config
from jaxembed.text.tokenizer import get_encoding
from jaxembed.train.plan import GiB, format_plan, loop_corrected_flops, plan
from jaxembed.train.trainer import Trainer

REQUIRED_KEYS = {
    "params",
    "param_bytes",
    "opt_state_bytes",
    "temp_bytes",
    "argument_bytes",
    "output_bytes",
    "flops_per_step",
    "tokens_per_step",
    "devices",
}
HANG_GUARD = 300  # seconds; a hang guard, not a speed requirement


def hand_param_count(padded_vocab: int, length: int, features: int, layers: int) -> int:
    """Token table, positional table, and per block: q, k, v, out kernels (D x D) and biases (D), LayerNorm."""
    d = features
    block = 4 * d * d + 4 * d + 2 * d
    return padded_vocab * d + length * d + layers * block


def padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def small_config(layers: int = 2, param_dtype: str = "float32"):
    c = named_config("tiny")
    c.model.num_layers, c.model.num_heads, c.model.param_dtype = layers, 4, param_dtype
    return c


# --- sizes -------------------------------------------------------------------


@pytest.mark.parametrize("param_dtype, itemsize", [("float32", 4), ("bfloat16", 2)])
def test_params_and_optimiser_state_match_a_hand_count(param_dtype, itemsize):
    c = small_config(layers=2, param_dtype=param_dtype)
    p = plan(c, vocab_size=1000)
    expected = hand_param_count(1024, c.data.max_length, c.model.features, layers=2)
    assert p["params"] == expected
    assert p["param_bytes"] == itemsize * expected
    # AdamW: mu and nu shaped (and typed) like the params, plus two int32 step counts (Adam's and the
    # learning-rate schedule's); global-norm clipping and decoupled weight decay keep no state.
    assert p["opt_state_bytes"] == 2 * itemsize * expected + 2 * 4
    assert p["param_bytes_per_device"] == p["param_bytes"]  # one device: nothing is split
    assert p["tokens_per_step"] == c.data.batch_size * c.data.max_length
    assert (p["devices"], p["mesh"], p["backend"]) == (1, {"data": 1, "model": 1}, jax.default_backend())
    assert (p["vocab_size"], p["padded_vocab_size"]) == (1000, 1024)


def test_memory_figures_are_those_of_the_trainers_compiled_step():
    c = small_config(layers=1)
    p = plan(c, vocab_size=1000)
    memory = Trainer.from_config(c, vocab_size=1000).compiled_step.memory_analysis()
    assert p["temp_bytes"] == memory.temp_size_in_bytes > 0
    assert p["argument_bytes"] == memory.argument_size_in_bytes
    assert p["output_bytes"] == memory.output_size_in_bytes
    # The state is donated: the new state reuses the old one's buffers, so the peak counts it once.
    assert p["peak_bytes"] == p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"] + p["temp_bytes"]
    assert p["alias_bytes"] >= p["param_bytes"] + p["opt_state_bytes"]
    # Arguments: the state (params, AdamW state, step, key) and the two [B, L] int32 batches.
    batch_bytes = 2 * 4 * c.data.batch_size * c.data.max_length
    state_bytes = p["param_bytes"] + p["opt_state_bytes"] + 4 + 8
    assert p["argument_bytes"] == state_bytes + batch_bytes


def test_tokens_per_epoch_counts_full_batches_of_the_training_split(corpus_path):
    text = corpus_path.read_text(encoding="utf-8")[20_000:60_000]  # no Gutenberg markers in this slice
    c = small_config(layers=0)
    c.model.active_vocab = True
    p = plan(c, text=text)
    ids = get_encoding("gpt2").encode(text, allowed_special={"<|endoftext|>"})
    n_train = len(ids) - round(len(ids) * c.data.val_fraction)
    length, stride, batch = c.data.max_length, c.data.stride, c.data.batch_size
    windows = len(range(0, n_train - length, stride))
    assert (p["corpus_tokens"], p["train_tokens"]) == (len(ids), n_train)
    assert p["steps_per_epoch"] == windows // batch
    assert p["tokens_per_epoch"] == (windows // batch) * batch * length
    # With an active vocabulary the table has one row per distinct id (padded), not 50,257.
    k = len(set(ids))
    assert p["vocab_size"] == k
    assert p["params"] == hand_param_count(padded(k, c.model.vocab_multiple), length, c.model.features, 0)


def test_bad_vocab_size_names_the_argument():
    with pytest.raises(ValueError, match=r"vocab_size=0 is not allowed"):
        plan(named_config("tiny"), vocab_size=0)


# --- FLOPs --------------------------------------------------------------------


def test_loop_bodies_count_once_per_iteration():
    k, n = 64, 10
    x = jnp.ones((k, k))
    looped = jax.jit(lambda y: jax.lax.fori_loop(0, n, lambda i, z: z @ z, y)).lower(x).compile()
    matmul_flops = n * 2 * k**3
    assert looped.cost_analysis()["flops"] < 2 * 2 * k**3  # XLA alone counts the body once
    assert loop_corrected_flops(looped, jax.devices()[0]) == pytest.approx(matmul_flops, rel=0.01)


def test_tiled_loss_adds_no_logits_product_of_flops():
    # The tiled loss takes its gradients from the forward's logits: the dense program's three N x D x V
    # products, no fourth (recomputing the logits in the backward pass would add 2 N D V FLOPs).
    c = small_config(layers=0)
    c.model.loss_tile_tokens = 2048
    dense = plan(c, vocab_size=1000)
    c.model.loss_tile_tokens = 64
    tiled = plan(c, vocab_size=1000)
    n, d, v = c.data.batch_size * c.data.max_length, c.model.features, 1024
    assert dense["loss_tile_tokens"] == 2048 and tiled["loss_tile_tokens"] == 64
    assert dense["flops_per_step"] == dense["xla_flops"]  # 256 tokens fit one tile: the dense program
    assert tiled["xla_flops"] < dense["flops_per_step"]  # XLA alone sees one of the 4 tiles
    assert abs(tiled["flops_per_step"] - dense["flops_per_step"]) / (2 * n * d * v) < 0.1
    # The head's three products (logits, d_h, d_table) are 6 N D V = 6 D per logit; the softmax and its
    # gradient add about 15 elementwise FLOPs per logit, 8% at D = 32 (0.3% at gpt2_small's D = 768).
    assert 6 * n * d * v <= dense["flops_per_step"] <= 1.15 * 6 * n * d * v


# --- gpt2_small, compiled only --------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_small_plans():
    plans = {}
    for layers in (0, 1):
        for tile in (0, 2048):
            c = named_config("gpt2_small")
            c.model.num_layers, c.model.loss_tile_tokens = layers, tile
            plans[layers, tile] = plan(c)
    return plans


def test_gpt2_small_tiled_loss_drops_the_logits_temporaries(gpt2_small_plans):
    c = named_config("gpt2_small")
    n, d, v = c.data.batch_size * c.data.max_length, c.model.features, 50304
    logits_f32 = 4 * n * v  # one float32 [B * L, V] array: 6.1 GiB
    for layers in (0, 1):
        dense, tiled = gpt2_small_plans[layers, 0], gpt2_small_plans[layers, 2048]
        assert dense["temp_bytes"] - tiled["temp_bytes"] >= logits_f32
        # The same three N x D x V products either way: the tiles' gradients reuse their forward logits.
        assert abs(tiled["flops_per_step"] - dense["flops_per_step"]) / (2 * n * d * v) < 0.02
    # Without attention the loss was the bulk: tiled, the whole step needs under 2 GiB of temporaries.
    assert gpt2_small_plans[0, 2048]["temp_bytes"] <= 2 * GiB
    no_attention = gpt2_small_plans[0, 0]
    assert 6 * n * d * v <= no_attention["flops_per_step"] <= 1.02 * 6 * n * d * v
    assert no_attention["params"] == hand_param_count(50304, 1024, 768, 0)
    assert gpt2_small_plans[1, 2048]["params"] == hand_param_count(50304, 1024, 768, 1)


def test_format_plan_gives_a_verdict_per_device_size(gpt2_small_plans):
    text = format_plan(gpt2_small_plans[0, 0], "gpt2_small")
    assert f"{gpt2_small_plans[0, 0]['params']:,}" in text
    verdicts = [line for line in text.splitlines() if line.startswith("fits a ")]
    assert verdicts[0].startswith("fits a 16 GiB device: no (peak 16.17 GiB")  # dense logits: 12 GiB pool
    assert verdicts[-1].startswith("fits a 141 GiB device: yes")


# --- the command line -------------------------------------------------------------


def run_plan(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "-m", "jaxembed.cli", "plan", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
    )


def test_cli_json_for_gpt2_small_is_one_object_with_the_library_figures(gpt2_small_plans):
    proc = run_plan("--config", "gpt2_small", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    result = json.loads(line)
    assert REQUIRED_KEYS <= set(result)
    library = gpt2_small_plans[0, 2048]  # gpt2_small's defaults: embeddings only, tiles of 2048
    assert {k: result[k] for k in REQUIRED_KEYS} == {k: library[k] for k in REQUIRED_KEYS}
    assert result["temp_bytes"] < gpt2_small_plans[0, 0]["temp_bytes"]
    assert result["temp_bytes"] <= 2 * 2**30  # the target: fits beside the state on a 16 GiB GPU
    assert (result["config"], result["loss_tile_tokens"]) == ("gpt2_small", 2048)


def test_cli_devices_splits_the_token_table_over_the_model_axis():
    proc = run_plan("--devices", "8", "--config.mesh.model=2", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["devices"], result["mesh"]) == (8, {"data": 4, "model": 2})
    c = named_config("tiny")
    d, length, heads = c.model.features, c.data.max_length, c.model.num_heads
    # Vocab rows and heads split in two; positions, LayerNorm and the out bias are replicated.
    per_device_params = 50304 * d // 2 + length * d + (4 * d * d + 3 * d) // 2 + d + 2 * d
    assert heads % 2 == 0
    assert result["param_bytes_per_device"] == 4 * per_device_params < result["param_bytes"]
    assert result["params"] == hand_param_count(50304, length, d, 1)


@pytest.mark.parametrize(
    "args, hint",
    [
        (["--config", "nope"], "no such config file"),
        (["--devices", "0"], "--devices 0 is not allowed"),
        (["--devices", "-2"], "--devices -2 is not allowed"),
        (["--config.model.featurez=3"], "Did you mean --config.model.features?"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(capsys, args, hint):
    code = cli.main(["plan", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("jaxembed plan: error:") and hint in line


def test_cli_table_on_this_backend(capsys):
    code = cli.main(["plan", "--config", "tiny", "--config.data.batch_size=4"])
    out, _ = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("plan for tiny: ")
    assert any(line.split()[:2] == ["tokens", "per"] and "64" in line for line in lines)
    assert any(line.strip().startswith("temporaries") and "MiB" in line for line in lines)


# --- scripts/accelerator_check.py ---------------------------------------------------


@pytest.mark.parametrize(
    "steps, hint", [("0", "0 is not allowed"), ("-3", "-3 is not allowed"), ("x", "'x' is not an integer")]
)
def test_accelerator_check_rejects_bad_steps_in_one_line(steps, hint):
    script = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "accelerator_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--steps", steps], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("accelerator_check.py: error: argument --steps:") and hint in line


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["--config.model.num_heads=3", "--config.model.features=30"], ("mesh.model=2", "model.num_heads=3")),
        (["--config.model.vocab_multiple=1"], ("mesh.model=2", "model.vocab_multiple=1", "50,257 rows")),
    ],
)
def test_a_model_the_mesh_cannot_split_is_refused_naming_the_fields(tmp_path, overrides, named):
    proc = run_plan("--devices", "2", "--config.mesh.model=2", *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert all(n in line for n in named) and "partitioned" not in line, line
    # train refuses the same before it compiles or writes anything.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    workdir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "jaxembed.cli", "train", "--workdir", str(workdir), "--config.mesh.model=2", *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=HANG_GUARD,
    )
    assert train.returncode == 2, train.stderr[-2000:]
    assert all(n in train.stderr for n in named) and len(train.stderr.strip().splitlines()) == 1, train.stderr
    assert not workdir.exists()
