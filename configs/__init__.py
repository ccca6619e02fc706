"""The named configs, shipped in the wheel as ``jaxembed.configs``: ``tiny``, ``default``, ``gpt2_small``.

Each module defines ``get_config()`` (the Flax/nanodo convention). ``--config NAME`` finds them by
name; ``--config PATH`` runs a copy of one.

Example:
  >>> from jaxembed.configs import tiny
  >>> tiny.get_config().model.features
  32
"""

NAMES = ("tiny", "default", "gpt2_small")
