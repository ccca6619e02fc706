"""GPT-2 small's embedding sizes (768 wide, 1024 context): for accelerators.

Every other field, and what it means: configs/default.py.

Run: jaxembed train --config gpt2_small --workdir runs/gpt2_small (or a copy of this file, by path)
"""

import ml_collections
from jaxembed.configs import default


def get_config() -> ml_collections.ConfigDict:
    """The default config with the fields below changed: 768-wide, context 1024, batch 32, bfloat16."""
    c = default.get_config()
    c.data.max_length = 1024  # GPT-2's context length.
    c.data.stride = 512  # Half-overlapping windows: twice the windows of a small corpus.
    c.data.batch_size = 32  # 32,768 tokens per step.
    c.model.features = 768  # GPT-2 small's width.
    c.model.dtype = "bfloat16"  # bf16 compute on accelerators; params and Adam state stay float32.
    # Embeddings only, as the seed: with the tiled loss the step needs 1.4 GiB of temporaries
    # (jaxembed plan --config gpt2_small). One attention layer (num_layers=1) adds the
    # [32, 12, 1024, 1024] attention scores: 8.1 GiB in all, for a 16 GiB+ GPU.
    c.model.num_layers = 0
    c.model.num_heads = 12  # GPT-2 small's heads (64 features each), when num_layers > 0.
    c.optim.learning_rate = 3e-3  # Wider tables want a smaller step.
    c.optim.warmup_steps = 100  # Longer warmup for the larger batch.
    c.train.steps = 2000  # Total optimiser steps.
    c.train.eval_every = 200  # Validation loss every 200 steps.
    c.train.checkpoint_every = 500  # Checkpoints at 500, 1000, 1500, 2000.
    return c
