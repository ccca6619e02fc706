"""Tiny config: a first run that learns in well under a minute on 2 CPU cores.

32-wide tables, context 16, batch 16, 300 steps, trained on the offline
`python-docs` corpus unless --corpus/--text says otherwise. The fields and why
each has its value: jaxembed/config.py (`tiny_config`, `base_config`).
Run: jaxembed train --workdir runs/tiny (tiny is the default; or --config configs/tiny.py)
"""

from jaxembed.config import tiny_config


def get_config():
    """The tiny run (also importable as ``jaxembed.config.tiny_config()``)."""
    return tiny_config()
