"""jaxembed: how language models turn text into vectors, in JAX/Flax.

Five stages, in the order data flows through them, each a subpackage with a public face:
``jaxembed.text`` (text -> ids), ``jaxembed.data`` (ids -> batches), ``jaxembed.nn`` (batches ->
logits and loss), ``jaxembed.train`` (the compiled step, the loop, checkpoints) and
``jaxembed.report`` (what a run learned). Each is imported on first use (``jaxembed.nn`` after
``import jaxembed`` imports it then), so ``import jaxembed`` stays cheap; the ``jaxembed``
command is ``jaxembed.cli``.

Example:
  >>> import jax
  >>> from jaxembed import data, nn, text
  >>> ids = text.get_encoding("gpt2").encode("To be, or not to be")
  >>> inputs_BxL, _ = next(iter(data.create_dataloader(ids, batch_size=1, max_length=4, stride=4)))
  >>> embed = nn.InputEmbedding(vocab_size=50257, max_length=4, features=8)
  >>> h_BxLxD, params = embed.init_with_output(jax.random.key(0), inputs_BxL)
  >>> h_BxLxD.shape
  (1, 4, 8)
"""

import importlib as _importlib

__version__ = "0.1.0"

__all__ = ["__version__"]

#: The stages' subpackages, imported by ``__getattr__`` when first named (PEP 562).
_STAGES = ("text", "data", "nn", "train", "report")


def __getattr__(name: str):
    if name in _STAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_STAGES})
