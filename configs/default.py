"""Default config: the seed notebook's dimensions (256-wide, GPT-2 vocabulary).

Every field and its meaning: jaxembed/config.py (`base_config`).
Run: jaxembed train --config default --workdir runs/default (or --config configs/default.py)
"""

from jaxembed.config import base_config


def get_config():
    """Romeo and Juliet (downloaded once, or --text), 256-wide, context 64, 1000 steps."""
    return base_config()
