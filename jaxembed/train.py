"""The training loop: ``train_and_evaluate(config, workdir)``.

Corpus -> ``input_pipeline.get_datasets`` -> ``trainer.Trainer`` (the compiled
step on a device mesh) -> metrics rows, orbax checkpoints and exact resume
from ``workdir``. The step, state and optimiser live in ``jaxembed.trainer``;
the data in ``jaxembed.input_pipeline``; the workdir's files in
``jaxembed.workdir``; reading a finished run back in ``jaxembed.run``.

Example:
  >>> from jaxembed.config import base_config
  >>> config = base_config()
  >>> config.model.features, config.data.max_length, config.train.steps = 8, 8, 2
  >>> result = train_and_evaluate(config, workdir=None, text="to be or not to be " * 600, progress=False)
  >>> int(result.state.step), sorted(result.metrics[-1])[:3]
  (2, ['grad_norm', 'learning_rate', 'step'])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxembed import config as config_lib
from jaxembed import input_pipeline
from jaxembed.checkpoint import Checkpointer
from jaxembed.model import EmbeddingLM, embedding_tables
from jaxembed.trainer import Trainer, TrainState, learning_rate_schedule, make_mesh
from jaxembed.workdir import MetricsLog, check_workdir

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged)."""


@dataclasses.dataclass
class TrainResult:
    """What ``train_and_evaluate`` returns."""

    state: TrainState
    metrics: list[dict]
    model: EmbeddingLM
    splits: input_pipeline.Splits
    workdir: pathlib.Path | None
    config: ml_collections.ConfigDict
    initial_params: Any = None
    #: Validation loss with the trained positional rows permuted at random: the gap to the
    #: final validation loss is how much the model relies on where a token sits.
    val_loss_positions_shuffled: float | None = None

    def tables(self, initial: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(token_VxD, position_LxD)`` as float32 numpy, padding rows dropped.

        ``initial=True`` gives the tables before training. With
        ``model.active_vocab`` the trained rows are placed at their token ids
        and the rows of tokens absent from the corpus are zero. Gathers shards
        from every process, so call it on all processes.
        """
        params = self.initial_params if initial else self.state.params
        token_KxD, position_LxD = embedding_tables(params, self.model.vocab_size)
        splits = self.splits
        return input_pipeline.expand_active(token_KxD, splits.active_ids, splits.vocab_size), position_LxD

    def token_counts(self) -> np.ndarray:
        """``counts_V``: how often each token occurs in the training split."""
        return self.splits.train_counts()


def _row_due(step: int, t: ml_collections.ConfigDict) -> tuple[bool, bool, bool]:
    last = step == t.steps
    checkpoint = last or step % t.checkpoint_every == 0
    evaluate = checkpoint or step % t.eval_every == 0  # never save a state whose held-out loss is unknown
    return last or evaluate or checkpoint or step % t.log_every == 0, evaluate, checkpoint


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike | None,
    *,
    text: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains ``EmbeddingLM`` as ``config`` says; resumes from ``workdir``.

    Args:
      config: a config from ``configs/`` (see ``jaxembed.config``).
      workdir: where metrics, checkpoints and the config go; ``None`` keeps
        everything in memory (no checkpoints, no resume).
      text: train on this text instead of the configured corpus.
      progress: show a progress bar on stderr.

    Returns:
      The final state, the metrics rows, the model and the data splits.

    Raises:
      ValueError: a config field is invalid (the message names it).
      WorkdirError: ``workdir`` cannot be written (raised before any compute).
      TrainingError: the loss became NaN/inf (the last good checkpoint is kept).
      CheckpointError: checkpoints exist but none can be restored.
    """
    config_lib.validate(config)
    workdir = check_workdir(workdir) if workdir is not None else None
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    iterator, eval_batches, splits = input_pipeline.get_datasets(config, mesh, text=text)
    ckpt = None
    try:
        trainer = Trainer.from_config(config, splits.model_vocab_size, mesh)
        state = trainer.init(jax.random.key(config.seed))
        # The step donates its input state; keep the untrained tables for the report.
        initial_params = jax.tree.map(jnp.copy, state.params)
        start_step = 0
        if workdir is not None:
            ckpt = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
            if ckpt.steps():
                state, start_step = ckpt.restore(trainer.abstract_state, iterator)
                log.info("Resuming from step %d (%s).", start_step, ckpt.directory)
            if jax.process_index() == 0:
                _write_run_files(workdir, config, splits)
        metrics = MetricsLog(workdir / "metrics.jsonl" if workdir else None, resume_step=start_step)
        schedule = learning_rate_schedule(config.optim, config.train.steps)
        if start_step == 0:
            metrics.append(
                {
                    "step": 0,
                    "learning_rate": float(schedule(0)),
                    "val_loss": trainer.evaluate(state.params, eval_batches),
                }
            )
        state = _loop(config, trainer, state, iterator, eval_batches, metrics, ckpt, start_step, progress)
        shuffled = positions_shuffled_loss(trainer, state.params, eval_batches, seed=config.seed)
    finally:
        if ckpt is not None:
            ckpt.close()
        iterator.close()
    return TrainResult(state, metrics.rows, trainer.model, splits, workdir, config, initial_params, shuffled)


def positions_shuffled_loss(trainer: Trainer, params: Any, eval_batches: list, *, seed: int = 0) -> float:
    """Validation loss with the positional table's rows permuted at random (a fixed, seeded permutation).

    Equal to the ordinary validation loss when the model ignores position;
    higher by as much as it relies on it.
    """
    position_LxD = params["params"]["embed"]["position"]["embedding"]
    order_L = np.random.default_rng(seed).permutation(position_LxD.shape[0])
    shuffled_LxD = jax.device_put(jnp.asarray(position_LxD)[order_L], position_LxD.sharding)
    shuffled = jax.tree.map(lambda x: x, params)  # a new tree: the state's params stay untouched
    shuffled["params"]["embed"]["position"]["embedding"] = shuffled_LxD
    return trainer.evaluate(shuffled, eval_batches)


def _write_run_files(workdir: pathlib.Path, config: ml_collections.ConfigDict, splits: input_pipeline.Splits) -> None:
    from jaxembed.fileio import atomic_open, write_text_atomic

    write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2))
    with atomic_open(workdir / "token_counts.npy", "wb") as f:
        np.save(f, splits.train_counts())
    if splits.active_ids is not None:
        with atomic_open(workdir / "active_ids.npy", "wb") as f:
            np.save(f, splits.active_ids)


def _loop(config, trainer: Trainer, state, iterator, eval_batches, metrics: MetricsLog, ckpt, start_step, progress):
    schedule = learning_rate_schedule(config.optim, config.train.steps)
    bar = _progress(start_step, config.train.steps, enabled=progress)
    tokens_per_step = config.data.batch_size * config.data.max_length
    window, window_start = [], time.perf_counter()
    try:
        for step in range(start_step + 1, config.train.steps + 1):
            inputs_BxL, targets_BxL = next(iterator)
            state, step_metrics = trainer.step(state, inputs_BxL, targets_BxL)
            window.append(step_metrics)
            due, evaluate, save = _row_due(step, config.train)
            if not due:
                continue
            losses = jax.device_get([m["loss"] for m in window])
            norms = jax.device_get([m["grad_norm"] for m in window])
            train_loss = float(np.mean(losses))
            row = {
                "step": step,
                "train_loss": train_loss,
                "grad_norm": float(np.mean(norms)),
                "learning_rate": float(schedule(step - 1)),
                "tokens_per_sec": len(window) * tokens_per_step / (time.perf_counter() - window_start),
            }
            if evaluate and math.isfinite(train_loss):
                row["val_loss"] = trainer.evaluate(state.params, eval_batches)
            _check_finite(row, step, config, ckpt)
            metrics.append(row)
            bar(step, row)
            if save and ckpt is not None:
                ckpt.save(step, state, iterator, metrics={"val_loss": row["val_loss"]})
            window, window_start = [], time.perf_counter()
    finally:
        bar(None, None)
    return state


def _check_finite(row: dict, step: int, config: ml_collections.ConfigDict, ckpt: Checkpointer | None) -> None:
    for name in ("train_loss", "val_loss"):
        if name in row and not math.isfinite(row[name]):
            if ckpt is not None:
                ckpt.wait()  # an in-flight save of an earlier step counts as the last good one
            last_good = ckpt.steps()[-1] if ckpt and ckpt.steps() else None
            raise TrainingError(
                f"the {'training' if name == 'train_loss' else 'validation'} loss became {row[name]} "
                f"by step {step}; stopping. "
                + (f"The last good checkpoint (step {last_good}) is untouched. " if last_good else "")
                + f"Try a smaller optim.learning_rate (now {config.optim.learning_rate})."
            )


def _progress(start: int, total: int, *, enabled: bool):
    """A one-line progress bar (step, loss, tokens/s) on stderr."""
    if not enabled or jax.process_index() != 0:
        return lambda step, row: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(step, row):
        if step is None:
            bar.close()
            return
        bar.update(step - bar.n)
        postfix = {"loss": f"{row['train_loss']:.3f}", "tok/s": f"{row['tokens_per_sec']:,.0f}"}
        if "val_loss" in row:
            postfix["val"] = f"{row['val_loss']:.3f}"
        bar.set_postfix(postfix, refresh=True)

    return update
