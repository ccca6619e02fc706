"""Reading a training run back from its workdir: config, tables, token counts, the model and its params.

Read-only: nothing in the workdir is changed, so it is safe on a run that is
still training. ``jaxembed neighbors``, ``export`` and ``sample`` use it.

Example:
  >>> import tempfile
  >>> import jax.numpy as jnp
  >>> from jaxembed.config import base_config
  >>> from jaxembed.train.loop import train_and_evaluate
  >>> config = base_config()
  >>> config.model.features, config.data.max_length, config.train.steps = 8, 8, 2
  >>> workdir = tempfile.mkdtemp()
  >>> _ = train_and_evaluate(config, workdir, text="to be or not to be " * 600, progress=False)
  >>> run = load_run(workdir)
  >>> run.step, run.token_VxD.shape, run.position_LxD.shape
  (2, (50257, 8), (8, 8))
  >>> run.model.apply(run.params, jnp.zeros((1, 8), jnp.int32)).shape  # the checkpoint's model
  (1, 8, 50257)
  >>> load_run(workdir, step="best").step  # the lowest validation loss among the kept checkpoints
  2
  >>> load_run(workdir, step=7)  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  jaxembed.train.checkpoint.CheckpointError: no checkpoint for step 7 in ...; available steps: 2.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxembed.data.splits import expand_active
from jaxembed.errors import InvalidArgumentError
from jaxembed.nn.model import EmbeddingLM, embedding_tables, make_model
from jaxembed.text import tokenizer
from jaxembed.train.checkpoint import Checkpointer, CheckpointError
from jaxembed.train.trainer import make_mesh, make_optimizer, state_shardings
from jaxembed.train.workdir import Workdir, WorkdirError


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished or running training run, read back from its workdir.

    Attributes:
      workdir: the run's folder.
      config: the config it was started with (``config.json``).
      step: the step of the checkpoint the tables come from.
      enc: its tokenizer.
      token_VxD: float32 token table, one row per tokenizer id (padding dropped).
      position_LxD: float32 positional table (the computed one for ``model.position =
        "sinusoidal"``; ``None`` for rotary, ALiBi and none).
      token_counts_V: how often each token occurs in the training split.
      active_ids: with ``model.active_vocab``, the sorted tokenizer ids the
        model has rows for (``K`` of them); else ``None``.
      model: the ``EmbeddingLM`` the config describes (``vocab_size`` is ``K``
        with ``active_vocab``: its ids index ``active_ids``).
      params: the checkpoint's parameters (unboxed, on one device):
        ``model.apply(params, ids_BxL)`` gives the run's logits.
    """

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    step: int
    enc: Any
    token_VxD: np.ndarray
    position_LxD: np.ndarray | None
    token_counts_V: np.ndarray
    active_ids: np.ndarray | None = None
    model: EmbeddingLM | None = None
    params: Any = None


def parse_step(text: str | int) -> str | int:
    """``"latest"``, ``"best"`` or a step number, as ``load_run(step=...)`` takes it.

    Raises:
      ValueError: anything else (the message names the value and what is allowed).

    Example:
      >>> parse_step("best"), parse_step("200"), parse_step(" Latest ")
      ('best', 200, 'latest')
    """
    value = str(text).strip().lower()
    if value in ("latest", "best"):
        return value
    if value.isdigit():
        return int(value)
    raise InvalidArgumentError(f"step={text!r}: must be 'latest', 'best' or a step number (an integer >= 0).")


def load_run(workdir: str | os.PathLike, step: str | int = "latest") -> Run:
    """Reads a run's config, token counts, checkpointed tables, model and params.

    Args:
      workdir: the run's folder.
      step: ``"latest"`` (the newest readable checkpoint, falling back to
        older ones if it is damaged), ``"best"`` (the checkpoint with the
        lowest validation loss, kept besides the latest ones), or a step number.

    Raises:
      CheckpointError: the workdir is not a jaxembed run, holds no readable
        checkpoint, or has no checkpoint for ``step`` (the message lists the
        available steps).
      ValueError: ``step`` is not one of the above.
    """
    step = parse_step(step)
    run_dir = Workdir(workdir)
    path = run_dir.path
    try:
        config = ml_collections.ConfigDict(run_dir.read_config())
    except WorkdirError as e:
        raise CheckpointError(str(e)) from None
    enc = tokenizer.get_encoding(config.data.tokenizer)
    active_ids = np.load(run_dir.active_ids_file) if run_dir.active_ids_file.exists() else None
    vocab_size = enc.n_vocab if active_ids is None else len(active_ids)
    model = make_model(config.model, vocab_size=vocab_size, max_length=config.data.max_length)
    tx = make_optimizer(config.optim, config.train.steps)
    abstract_state, _ = state_shardings(model, tx, make_mesh(devices=jax.devices()[:1]))
    checkpointer = Checkpointer(run_dir.checkpoints_dir)
    try:
        if step == "best":
            step = checkpointer.best_step()
            if step is None:
                available = ", ".join(map(str, checkpointer.steps())) or "none"
                raise CheckpointError(
                    f"no checkpoint in {checkpointer.directory} has a validation loss, so there is no best one; "
                    f"available steps: {available}."
                )
        state, step = checkpointer.restore(abstract_state, read_only=True, step=None if step == "latest" else step)
    finally:
        checkpointer.close()
    token_KxD, position_LxD = embedding_tables(state.params, model.vocab_size, model.position, model.max_length)
    token_VxD = expand_active(token_KxD, active_ids, enc.n_vocab)
    counts_V = np.load(run_dir.token_counts_file)
    return Run(path, config, step, enc, token_VxD, position_LxD, counts_V, active_ids, model, state.params)
