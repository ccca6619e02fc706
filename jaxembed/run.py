"""Reading a training run back from its workdir: config, tables, token counts.

Read-only: nothing in the workdir is changed, so it is safe on a run that is
still training. ``jaxembed neighbors`` and ``jaxembed export`` use it.

Example:
  >>> import tempfile
  >>> from jaxembed.config import base_config
  >>> from jaxembed.train import train_and_evaluate
  >>> config = base_config()
  >>> config.model.features, config.data.max_length, config.train.steps = 8, 8, 2
  >>> workdir = tempfile.mkdtemp()
  >>> _ = train_and_evaluate(config, workdir, text="to be or not to be " * 600, progress=False)
  >>> run = load_run(workdir)
  >>> run.step, run.token_VxD.shape, run.position_LxD.shape
  (2, (50257, 8), (8, 8))
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxembed import tokenizer
from jaxembed.checkpoint import Checkpointer, CheckpointError
from jaxembed.input_pipeline import expand_active
from jaxembed.model import embedding_tables, make_model
from jaxembed.trainer import make_mesh, make_optimizer, state_shardings


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished or running training run, read back from its workdir.

    Attributes:
      workdir: the run's folder.
      config: the config it was started with (``config.json``).
      step: the step of the checkpoint the tables come from.
      enc: its tokenizer.
      token_VxD: float32 token table, one row per tokenizer id (padding dropped).
      position_LxD: float32 positional table.
      token_counts_V: how often each token occurs in the training split.
    """

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    step: int
    enc: Any
    token_VxD: np.ndarray
    position_LxD: np.ndarray
    token_counts_V: np.ndarray


def load_run(workdir: str | os.PathLike) -> Run:
    """Reads a run's config, token counts and latest readable checkpointed tables.

    Raises:
      CheckpointError: the workdir is not a jaxembed run, or holds no
        readable checkpoint.
    """
    path = pathlib.Path(workdir).absolute()
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a jaxembed run: {config_path} is missing.")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    enc = tokenizer.get_encoding(config.data.tokenizer)
    active_path = path / "active_ids.npy"
    active_ids = np.load(active_path) if active_path.exists() else None
    vocab_size = enc.n_vocab if active_ids is None else len(active_ids)
    model = make_model(config.model, vocab_size=vocab_size, max_length=config.data.max_length)
    tx = make_optimizer(config.optim, config.train.steps)
    abstract_state, _ = state_shardings(model, tx, make_mesh(devices=jax.devices()[:1]))
    checkpointer = Checkpointer(path / "checkpoints")
    try:
        state, step = checkpointer.restore(abstract_state, read_only=True)
    finally:
        checkpointer.close()
    token_KxD, position_LxD = embedding_tables(state.params, model.vocab_size)
    token_VxD = expand_active(token_KxD, active_ids, enc.n_vocab)
    return Run(path, config, step, enc, token_VxD, position_LxD, np.load(path / "token_counts.npy"))
