"""jaxembed.train.allocator: XLA:CPU's per-step buffers stay in the process, counted by the kernel.

A step whose temporaries exceed glibc's 32 MiB mmap ceiling (the seed's 256-wide table: 103 MB) gets
fresh pages from the kernel on every run unless ``tune_cpu_allocator`` came first; the kernel's own
count of minor page faults (``getrusage``) tells the two apart without timing anything.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest
from run_files import jaxembed

#: 8 x 4 tokens, the seed's 256-wide table, no attention: 103 MB of temporaries per step.
STEPS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    if sys.argv[1] == "tuned":
        from jaxembed.train import tune_cpu_allocator
        assert tune_cpu_allocator()
    import jax, jax.numpy as jnp
    from jaxembed.config import base_config
    from jaxembed.train import Trainer
    config = base_config()
    config.data.batch_size, config.data.max_length, config.model.num_layers = 8, 4, 0
    trainer = Trainer.from_config(config, vocab_size=50257)
    temp = trainer.compiled_step.memory_analysis().temp_size_in_bytes
    state = trainer.init(jax.random.key(0))
    ids = jnp.arange(32, dtype=jnp.int32).reshape(8, 4)
    for _ in range(3):
        state, _ = trainer.step(state, ids, ids)
    jax.block_until_ready(state)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        state, _ = trainer.step(state, ids, ids)
        jax.block_until_ready(state)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    print(json.dumps({"temp_bytes": temp, "faults_per_step": faults}))
    """
)


def _glibc_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    return {**env, "JAX_PLATFORMS": "cpu"}


def _steps(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", STEPS_SCRIPT, mode], env=_glibc_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tuned_steps_reuse_their_pages_untuned_ones_fault_them_in():
    untuned, tuned = _steps("untuned"), _steps("tuned")
    pages = untuned["temp_bytes"] / 4096
    assert untuned["temp_bytes"] > 32 << 20  # above glibc's mmap ceiling: the case the tuning is for
    # Without it, every page of the temporaries is new on every step ...
    assert untuned["faults_per_step"] > 0.8 * pages, untuned
    # ... with it, the same pages come back. (Seen here: 0 to 0.3 pages a step, in multiples of one
    # 10 MB buffer, more when the machine is busy: this machine's kernel pages out memory it finds
    # cold (DAMON's pageout scheme), which no malloc setting reaches.)
    assert tuned["faults_per_step"] < 0.5 * pages, tuned


def test_the_console_command_tunes_before_jax_starts(tmp_path, env, text_path):
    """``jaxembed train`` (the console entry) runs its steps without faulting their pages in again.

    Two runs of the same 256-wide config, 4 and 24 steps: the 20 extra steps add next to no faults.
    """
    faults = {}
    for steps in (4, 24):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
        done = jaxembed(
            [
                "train", "--workdir", tmp_path / f"run{steps}", "--text", text_path, "--no-progress",
                "--config", "default", "--config.data.max_length=4", "--config.data.stride=4",
                "--config.data.batch_size=8", "--config.model.num_layers=0", f"--config.train.steps={steps}",
                "--config.train.eval_every=1000", "--config.train.checkpoint_every=1000",
                "--config.train.tensorboard=False", "--config.data.val_fraction=0.5",
            ],
            {**env, **_glibc_env(), "JAXEMBED_CACHE": env["JAXEMBED_CACHE"]},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        faults[steps] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
    per_step = (faults[24] - faults[4]) / 20
    assert per_step < 0.5 * 103e6 / 4096, faults  # untuned: a page of the 103 MB of temporaries each (above)


@pytest.mark.parametrize("variable", ["MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "LD_PRELOAD"])
def test_an_allocator_the_user_configured_is_left_alone(variable):
    code = "from jaxembed.train.allocator import tune_cpu_allocator; print(tune_cpu_allocator())"
    value = "/nonexistent/libtcmalloc.so" if variable == "LD_PRELOAD" else "4"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**_glibc_env(), variable: value}, capture_output=True, text=True
    )
    assert done.stdout.strip() == "False", done.stderr[-2000:]
