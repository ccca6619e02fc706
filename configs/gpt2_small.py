"""GPT-2 small's embedding sizes (768 wide, 1024 context): for accelerators.

Every field and its meaning: jaxembed/config.py (`base_config`, `gpt2_small_config`).
Run: jaxembed train --config gpt2_small --workdir runs/gpt2_small
(or --config configs/gpt2_small.py: a copy of this file is yours to change).
"""

from jaxembed.config import gpt2_small_config


def get_config():
    """768-wide tables, context 1024, batch 32, bfloat16 compute."""
    return gpt2_small_config()
