"""GPT-2 small's embedding sizes (768 wide, 1024 context): for accelerators.

Every field and its meaning: jaxembed/config.py (`base_config`).
Run: jaxembed train --config configs/gpt2_small.py --workdir runs/gpt2_small
"""

from jaxembed.config import base_config


def get_config():
    """768-wide tables, context 1024, batch 32, bfloat16 compute."""
    c = base_config()
    c.data.max_length = 1024  # GPT-2's context length.
    c.data.stride = 512  # Half-overlapping windows: twice the windows of a small corpus.
    c.data.batch_size = 32  # 32,768 tokens per step.
    c.model.features = 768  # GPT-2 small's width.
    c.model.dtype = "bfloat16"  # bf16 compute on accelerators; params and Adam state stay float32.
    c.optim.learning_rate = 3e-3  # Wider tables want a smaller step.
    c.optim.warmup_steps = 100  # Longer warmup for the larger batch.
    c.train.steps = 2000  # Total optimiser steps.
    c.train.eval_every = 200  # Validation loss every 200 steps.
    c.train.checkpoint_every = 500  # Checkpoints at 500, 1000, 1500, 2000.
    return c
