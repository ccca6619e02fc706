"""The training loop: ``train_and_evaluate(config, workdir)``.

Corpus -> ``pipeline.get_datasets`` -> ``trainer.Trainer`` (the compiled
step on a device mesh) -> metrics rows, orbax checkpoints and exact resume
from ``workdir``. The step, state and optimiser live in ``jaxembed.train.trainer``;
the data in ``jaxembed.data.pipeline``; the workdir's files in
``jaxembed.train.workdir``; reading a finished run back in ``jaxembed.train.run``.

Example:
  >>> from jaxembed.config import base_config
  >>> config = base_config()
  >>> config.model.features, config.data.max_length, config.train.steps = 8, 8, 2
  >>> result = train_and_evaluate(config, workdir=None, text="to be or not to be " * 600, progress=False)
  >>> int(result.state.step), sorted(result.metrics[-1])[:3]
  (2, ['grad_norm', 'learning_rate', 'step'])
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxembed import config as config_lib
from jaxembed.data import pipeline
from jaxembed.data.splits import Splits, expand_active
from jaxembed.errors import InvalidArgumentError, JaxembedError
from jaxembed.nn.model import EmbeddingLM, embedding_tables
from jaxembed.nn.pretrained import gpt2_cache_paths, gpt2_source, gpt2_tables, init_from_gpt2
from jaxembed.train.checkpoint import Checkpointer
from jaxembed.train.tensorboard import SummaryLog, profile
from jaxembed.train.trainer import Trainer, TrainState, learning_rate_schedule, make_mesh
from jaxembed.train.workdir import MetricsLog, Workdir, WorkdirError

log = logging.getLogger(__name__)


class TrainingError(JaxembedError, RuntimeError):
    """Training cannot go on (the loss diverged)."""


@dataclasses.dataclass
class TrainResult:
    """What ``train_and_evaluate`` returns."""

    state: TrainState
    metrics: list[dict]
    model: EmbeddingLM
    splits: Splits
    workdir: pathlib.Path | None
    config: ml_collections.ConfigDict
    initial_params: Any = None
    #: Validation loss with the trained positional rows permuted at random: the gap to the
    #: final validation loss is how much the model relies on where a token sits.
    val_loss_positions_shuffled: float | None = None
    #: The step training started from (0, or the restored checkpoint's step).
    start_step: int = 0
    #: Held-out loss by evaluation length ``{L: loss, 2L: ..., 4L: ...}`` (``val_loss_by_length``);
    #: a learned table has only ``L``.
    val_loss_by_length: dict[int, float] | None = None
    #: Held-out tokens each evaluation scores: ``train.eval_batches`` global batches of
    #: ``data.batch_size x data.max_length`` (fewer where the held-out split is shorter).
    val_tokens_evaluated: int | None = None

    def tables(self, initial: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(token_VxD, position_LxD)`` as float32 numpy, padding rows dropped.

        ``initial=True`` gives the tables before training. With
        ``model.active_vocab`` the trained rows are placed at their token ids
        and the rows of tokens absent from the corpus are zero. Gathers shards
        from every process, so call it on all processes.
        """
        params = self.initial_params if initial else self.state.params
        model = self.model
        token_KxD, position_LxD = embedding_tables(params, model.vocab_size, model.position, model.max_length)
        splits = self.splits
        return expand_active(token_KxD, splits.active_ids, splits.vocab_size), position_LxD

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

    Everything is validated before anything is written; a workdir is used by
    one run at a time (an OS lock); resuming with settings that change shapes
    or data is refused before any checkpoint is touched (``workdir.RESUME_RULES``);
    SIGTERM or SIGINT finish the current step, save a checkpoint and raise
    ``Preempted``.

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
      WorkdirError: ``workdir`` cannot be written, is in use, is not shared by
        every process, or holds a run with other settings or another corpus.
      TrainingError: the loss became NaN/inf (the last good checkpoint is kept).
      CheckpointError: checkpoints exist but none can be restored, or one
        cannot be written (disk full: the message names the last good step).
      Preempted: a SIGTERM/SIGINT stopped the run after saving a checkpoint.
    """
    config_lib.validate(config)
    workdir = Workdir(workdir) if workdir is not None else None
    try:
        with contextlib.ExitStack() as stack:
            # From here on a signal never interrupts JAX mid-call: it is noted, and acted on between
            # start-up steps (Interrupted) or after the current training step (Preempted).
            stop = stack.enter_context(_StopSignals())
            changes = workdir.open_for_run(stack, config.to_dict()) if workdir is not None else {}
            # Before the data and the compilation: a missing network fails in seconds, leaving nothing.
            pretrained = _fetch_pretrained(config, workdir, changes, stop)
            mesh = make_mesh(config.mesh.data, config.mesh.model)
            stop.begin("loading the data")
            iterator, eval_batches, splits = pipeline.get_datasets(config, mesh, text=text)
            stack.callback(iterator.close)
            if splits.text_note and jax.process_index() == 0:
                # What was cut from the text, so its token count can be compared with other tools'.
                log.info(
                    "Corpus: %s -> %s %s tokens (%s for training, %s held out).",
                    splits.text_note,
                    f"{len(splits.train_ids) + len(splits.val_ids):,}",
                    config.data.tokenizer,
                    f"{len(splits.train_ids):,}",
                    f"{len(splits.val_ids):,}",
                )
            stop.begin("compiling the train step")
            # Before the workdir is created: a model the mesh cannot split is refused leaving nothing.
            trainer = Trainer.from_config(config, splits.model_vocab_size, mesh)
            stop.check()
            if workdir is not None:
                workdir.create(stack, splits.corpus_fingerprint)
            run = _Run(config, workdir, trainer, iterator, eval_batches, progress, stack, stop, pretrained)
            del pretrained  # the run drops the tables (154 MB) once they are in the params
            return run.train(splits, changes)
    except Interrupted as e:
        # A run interrupted before its first checkpoint leaves no workdir it created itself.
        if workdir is not None and workdir.created and not workdir.has_checkpoints():
            if jax.process_index() == 0:
                shutil.rmtree(workdir.path, ignore_errors=True)
            e.removed = workdir.path
        raise


@dataclasses.dataclass
class _Run:
    """What the loop needs, held once instead of passed as ten parameters."""

    config: ml_collections.ConfigDict
    workdir: Workdir | None
    trainer: Trainer
    iterator: Any
    eval_batches: list
    progress: bool
    stack: contextlib.ExitStack
    stop: _StopSignals
    pretrained: _Pretrained | None = None
    checkpointer: Checkpointer | None = None

    def train(self, splits: Splits, changes: dict) -> TrainResult:
        config, workdir, trainer = self.config, self.workdir, self.trainer
        state = trainer.init(jax.random.key(config.seed))
        if self.pretrained is not None:
            # Before the copy below: the report's "before training" is what the run started from.
            pretrained, self.pretrained = self.pretrained, None
            state = state.replace(params=pretrained.load(state.params, trainer.model))
            if workdir is None or not workdir.resuming:  # a resume's state comes from its checkpoint
                log.info(pretrained.describe(trainer.model))
        # The step donates its input state; keep the untrained tables for the report: one program for the
        # tree, placed as the trained params will be (the report samples from both with one compiled step).
        shardings = jax.tree.map(lambda x: x.sharding, state.params)
        initial_params = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=shardings)(state.params)
        start_step = 0
        if workdir is not None:
            self.checkpointer = Checkpointer(workdir.checkpoints_dir, keep=config.train.keep_checkpoints)
            self.stack.callback(self.checkpointer.close)
            if self.checkpointer.steps():
                self.stop.begin("restoring the checkpoint")
                state, start_step = self.checkpointer.restore(trainer.abstract_state, self.iterator)
                self.stop.check()
                if start_step >= config.train.steps:
                    log.info(
                        "Already trained to step %d (train.steps=%d): nothing to train; raise --config.train.steps "
                        "to continue.",
                        start_step,
                        config.train.steps,
                    )
                else:
                    log.info("Resuming from step %d (%s).", start_step, self.checkpointer.directory)
                _announce(changes, config, start_step)
            if jax.process_index() == 0:
                workdir.write_run_files(
                    config.to_json_best_effort(indent=2),
                    fingerprint=splits.corpus_fingerprint,
                    token_counts=splits.train_counts(),
                    active_ids=splits.active_ids,
                    changes=changes,
                    step=start_step,
                )
        metrics = MetricsLog(workdir.metrics_file if workdir else None, resume_step=start_step)
        if workdir is not None and config.train.tensorboard:
            summaries = self.stack.enter_context(SummaryLog(workdir.path, resume_step=start_step))
            summaries.write_config(config.to_json_best_effort(indent=2))
            metrics.sinks.append(summaries.write_row)
        profiler = profile(
            workdir.path if workdir else None, config.train.profile_steps, total_steps=config.train.steps
        )
        self.stack.callback(profiler.close)
        learning_rates = _learning_rates(config)
        if start_step == 0:
            self.stop.begin("evaluating the untrained model")
            metrics.append(
                {
                    "step": 0,
                    "learning_rate": float(learning_rates[0]),
                    "val_loss": trainer.evaluate(state.params, self.eval_batches),
                }
            )
        self.stop.begin(None)  # in the loop: a signal stops after the current step, with a checkpoint
        state = self.loop(state, metrics, start_step, profiler, learning_rates)
        self.stop.phase = "evaluating the trained model"
        shuffled = None
        if trainer.model.position == "learned":
            shuffled = positions_shuffled_loss(trainer, state.params, self.eval_batches, seed=config.seed)
        last = metrics.rows[-1] if metrics.rows else {}
        final_val_loss = last.get("val_loss") if last.get("step") == int(state.step) else None
        by_length = val_loss_by_length(
            trainer, state.params, self.eval_batches, splits.val_ids, config, val_loss=final_val_loss
        )
        if self.stop.signum is not None:  # trained and saved: only the report is left, for a rerun
            if self.checkpointer is not None:
                self.checkpointer.wait()
            raise Preempted(self.stop.signum, int(state.step), saved=self.checkpointer is not None)
        path = workdir.path if workdir else None
        evaluated = sum(int(np.prod(inputs.shape)) for inputs, _ in self.eval_batches)
        return TrainResult(
            state,
            metrics.rows,
            trainer.model,
            splits,
            path,
            config,
            initial_params=initial_params,
            val_loss_positions_shuffled=shuffled,
            start_step=start_step,
            val_loss_by_length=by_length,
            val_tokens_evaluated=evaluated,
        )

    def loop(self, state, metrics: MetricsLog, start_step: int, profiler, learning_rates: np.ndarray) -> TrainState:
        config, trainer, ckpt, iterator = self.config, self.trainer, self.checkpointer, self.iterator
        bar = _progress(start_step, config.train.steps, enabled=self.progress)
        tokens_per_step = config.data.batch_size * config.data.max_length
        window, window_start = [], time.perf_counter()
        stop = self.stop
        try:
            for step in range(start_step + 1, config.train.steps + 1):
                with profiler.step(step, wait_for=state):
                    inputs_BxL, targets_BxL = next(iterator)
                    state, step_metrics = trainer.step(state, inputs_BxL, targets_BxL)
                # Each step finishes before the next is dispatched: a stop requested now waits for this
                # step only, never for a queue of steps JAX dispatched ahead (a preemption gives ~30 s).
                # The device idles only for the host's next(iterator) (prefetched by Grain) and dispatch.
                jax.block_until_ready(step_metrics["loss"])
                window.append(step_metrics)
                stop_signal = stop.requested(step)
                due, evaluate, save = _row_due(step, config.train)
                if stop_signal is not None:
                    # A preempted run saves where it stands at once: one step plus one save, no
                    # evaluation (its loss is checked finite; the checkpoint then has no val_loss
                    # and is never chosen as the best one).
                    due = save = True
                if not due:
                    continue
                losses = jax.device_get([m["loss"] for m in window])
                norms = jax.device_get([m["grad_norm"] for m in window])
                train_loss = float(np.mean(losses))
                row = {
                    "step": step,
                    "train_loss": train_loss,
                    "grad_norm": float(np.mean(norms)),
                    "learning_rate": float(learning_rates[step - 1]),
                    "tokens_per_sec": len(window) * tokens_per_step / (time.perf_counter() - window_start),
                }
                if evaluate and math.isfinite(train_loss):
                    row["val_loss"] = trainer.evaluate(state.params, self.eval_batches)
                _check_finite(row, step, config, ckpt)
                _write(metrics.append, row, ckpt=ckpt)
                bar(step, row)
                if save and ckpt is not None:
                    scored = {"val_loss": row["val_loss"]} if "val_loss" in row else None
                    ckpt.save(step, state, iterator, metrics=scored)
                if stop_signal is not None:
                    if ckpt is not None:
                        ckpt.wait()
                    raise Preempted(stop_signal, step, saved=ckpt is not None)
                window, window_start = [], time.perf_counter()
        finally:
            bar(None, None)
        return state


@dataclasses.dataclass(frozen=True)
class _Pretrained:
    """GPT-2's tables, fetched before the slow parts of start-up, and where they came from."""

    wte_VxD: np.ndarray
    wpe_PxD: np.ndarray
    source: str

    def load(self, params: Any, model: EmbeddingLM) -> Any:
        """``params`` with the tables in (``nn.init_from_gpt2``): the state's dtypes and shardings kept."""
        learned = model.position == "learned"  # the other schemes have no table to fill
        return init_from_gpt2(
            params, vocab_size=model.vocab_size, position=learned, tables=(self.wte_VxD, self.wpe_PxD)
        )

    def describe(self, model: EmbeddingLM) -> str:
        if model.position == "learned":
            return f"Token and position tables start from GPT-2 124M ({self.source})."
        return (
            f"The token table starts from GPT-2 124M ({self.source}); model.position={model.position!r} has no "
            "position table to fill, so GPT-2's positions are not used."
        )


def _fetch_pretrained(
    config: ml_collections.ConfigDict, workdir: Workdir | None, changes: dict, stop: _StopSignals
) -> _Pretrained | None:
    """GPT-2's tables when the run starts (or started) from them (``model.init_from``), else None.

    A resumed run continues from its checkpoint: the tables it started from serve only as the
    report's "before training", so they are read from the cache and never downloaded again.

    Raises:
      PretrainedUnavailableError: a fresh run cannot get the tables (one line: the URL, the cache paths).
    """
    resuming = workdir is not None and workdir.resuming
    # What the run started from: on a resume with a changed init_from, the run's own value.
    started_from = changes["model.init_from"][0] if "model.init_from" in changes else config.model.init_from
    if started_from != "gpt2":
        return None
    paths = gpt2_cache_paths()
    cached = all(path.is_file() for path in paths.values())
    folder = paths["wte"].parent
    if resuming and not cached:
        log.warning(
            "GPT-2's tables are no longer cached in %s: the report's 'before training' shows the seeded "
            "initialisation, not the GPT-2 tables this run started from.",
            folder,
        )
        return None
    stop.begin("fetching GPT-2's tables")
    wte_VxD, wpe_PxD = gpt2_tables()
    source = f"cached in {folder}" if cached else f"{gpt2_source()}, cached in {folder}"
    return _Pretrained(wte_VxD, wpe_PxD, source)


def _learning_rates(config: ml_collections.ConfigDict) -> np.ndarray:
    """The learning rate of every step, ``[train.steps + 1]`` (index ``s``: the rate step ``s + 1`` uses).

    One compiled call of the schedule: called eagerly, its dozen operations would each be a
    program of their own to trace and fetch from the compilation cache.
    """
    schedule = learning_rate_schedule(config.optim, config.train.steps)
    return np.asarray(jax.jit(schedule)(np.arange(config.train.steps + 1)))


def _announce(notices: dict, config: ml_collections.ConfigDict, step: int) -> None:
    """Says out loud what a resume with changed settings changes."""
    if not notices:
        return
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in notices.items())
    message = f"Resuming with changed settings: {listed}."
    if any(k == "train.steps" or k.startswith("optim.") for k in notices):
        old_optim = ml_collections.ConfigDict(config.optim.to_dict())
        for key, (old, _) in notices.items():
            if key.startswith("optim."):
                old_optim[key.split(".", 1)[1]] = old
        old_steps = notices.get("train.steps", (config.train.steps,))[0]
        before = float(learning_rate_schedule(old_optim, old_steps)(step))
        after = float(learning_rate_schedule(config.optim, config.train.steps)(step))
        message += (
            f" The learning-rate schedule is re-planned for {config.train.steps} steps: "
            f"step {step + 1} uses {after:.6g} (the old plan: {before:.6g})."
        )
    if "model.init_from" in notices:
        message += " model.init_from acts on a fresh start only: the run goes on from its checkpoint."
    log.warning(message + " Recorded in config_changes.jsonl.")


def positions_shuffled_loss(trainer: Trainer, params: Any, eval_batches: list, *, seed: int = 0) -> float:
    """Validation loss with the positional table's rows permuted at random (a fixed, seeded permutation).

    Equal to the ordinary validation loss when the model ignores position;
    higher by as much as it relies on it.
    """
    position_LxD = params["params"]["embed"]["position"]["embedding"]
    order_L = np.random.default_rng(seed).permutation(position_LxD.shape[0])
    # One program (an eager gather is several), valid for a table spread over hosts.
    shuffled_LxD = jax.jit(lambda table: table[order_L], out_shardings=position_LxD.sharding)(position_LxD)
    shuffled = jax.tree.map(lambda x: x, params)  # a new tree: the state's params stay untouched
    shuffled["params"]["embed"]["position"]["embedding"] = shuffled_LxD
    return trainer.evaluate(shuffled, eval_batches)


#: Evaluation lengths as multiples of the trained context ``L`` (the ALiBi paper's question).
EVAL_LENGTH_FACTORS: tuple[int, ...] = (1, 2, 4)


def val_loss_by_length(
    trainer: Trainer,
    params: Any,
    eval_batches: list,
    val_ids: np.ndarray,
    config: ml_collections.ConfigDict,
    *,
    val_loss: float | None = None,
) -> dict[int, float]:
    """Held-out loss on windows of ``L``, ``2L`` and ``4L`` tokens (``EVAL_LENGTH_FACTORS``), in nats per token.

    At ``L`` it is the ordinary validation loss (the same ``eval_batches``; pass ``val_loss`` when
    it is already known for these params, so it is not evaluated twice); longer windows are cut
    from the same held-out split, about as many tokens in all. A learned table has no rows past
    ``L``, so it gets ``L`` alone; a length the split is too short for is left out.
    """
    length = trainer.model.max_length
    losses = {length: val_loss if val_loss is not None else trainer.evaluate(params, eval_batches)}
    if trainer.model.position == "learned":
        return losses
    for factor in EVAL_LENGTH_FACTORS[1:]:
        try:
            batches = pipeline.make_eval_batches(
                val_ids,
                trainer.mesh,
                batch_size=config.data.batch_size,
                max_length=factor * length,
                num_batches=max(1, -(-config.train.eval_batches // factor)),
                tokenizer=config.data.tokenizer,
            )
        except InvalidArgumentError:  # the held-out split has fewer than batch_size windows this long
            continue
        losses[factor * length] = trainer.evaluate(params, batches)
    return losses


class Preempted(RuntimeError):
    """A SIGTERM or SIGINT stopped training after the current step; a checkpoint of it was saved."""

    def __init__(self, signum: int, step: int, saved: bool):
        name = signal.Signals(signum).name
        where = "a checkpoint of it was saved" if saved else "no workdir, so nothing was saved"
        super().__init__(f"stopped by {name} after step {step}; {where}. Rerun the same command to resume.")
        self.signum, self.step = signum, step


class Interrupted(RuntimeError):
    """A SIGINT or SIGTERM came before training started; nothing was trained or saved."""

    def __init__(self, signum: int, phase: str):
        self.signum, self.phase, self.removed = signum, phase, None
        super().__init__(signal.Signals(signum).name)

    def __str__(self) -> str:
        gone = f"; the new workdir {self.removed} was removed" if self.removed else ""
        return (
            f"interrupted by {signal.Signals(self.signum).name} while {self.phase}: nothing was trained{gone}. "
            "Rerun the same command to start again."
        )


class _StopSignals:
    """Turns SIGTERM/SIGINT into a request to stop after the current step (a second signal stops at once).

    With several processes, JAX's coordination service owns SIGTERM and
    ``multihost_utils.reached_preemption_sync_point`` makes every process stop
    at the same step; a SIGINT is passed on to it as a SIGTERM, so that a Ctrl-C
    to one process stops them all too (without a collective per step). Signal
    handlers can only be set from the main thread.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        #: What start-up is doing (for the message), or None once the training loop runs.
        self.phase: str | None = "starting"

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            mine = self.SIGNALS if jax.process_count() == 1 else (signal.SIGINT,)
            for sig in mine:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored by the parent (nohup): stays so
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum
        if self.phase is None and jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier, which tells every process
        if self.phase is None:
            log.warning(
                "%s received: finishing step and saving a checkpoint (send it again to stop at once).",
                signal.Signals(signum).name,
            )
        else:
            log.warning(
                "%s received while %s: stopping when that ends (send it again to stop at once).",
                signal.Signals(signum).name,
                self.phase,
            )

    def check(self) -> None:
        """Raises ``Interrupted`` if a signal came during start-up (call between start-up steps)."""
        if self.signum is not None:
            raise Interrupted(self.signum, self.phase or "starting")

    def begin(self, phase: str | None) -> None:
        """Ends the current start-up step (``check``) and names the next one (None: the training loop)."""
        self.check()
        self.phase = phase

    def requested(self, step: int) -> int | None:
        """The signal to stop for at this step, or None (collective: call it on every process every step)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                return self.signum or signal.SIGTERM
            return None
        return self.signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _write(write, *args, ckpt: Checkpointer | None) -> None:
    """Runs a file write; a failure (disk full, permission lost) becomes one clear error."""
    try:
        write(*args)
    except OSError as e:
        if ckpt is not None:
            with contextlib.suppress(Exception):
                ckpt.wait()
        good = ckpt.steps() if ckpt is not None else []
        last = f"The last good checkpoint is step {good[-1]}" if good else "No checkpoint was completed"
        raise WorkdirError(
            f"could not write {getattr(e, 'filename', None) or 'a run file'} ({e.strerror or e}). "
            f"{last}; fix the problem (e.g. free disk space) and rerun the same command to resume."
        ) from None


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
    """A one-line progress bar (step, loss, tokens/s) on stderr; without it, a log line per evaluation."""
    if jax.process_index() != 0:
        return lambda step, row: None
    if not enabled:  # logs and batch jobs: not silent for minutes, and no bar redrawn into a file

        def log_evaluation(step, row):
            if row is not None and "val_loss" in row:
                log.info(
                    "step %d/%d: train loss %.3f, validation loss %.3f, %s tokens/s",
                    step,
                    total,
                    row["train_loss"],
                    row["val_loss"],
                    f"{row['tokens_per_sec']:,.0f}",
                )

        return log_evaluation
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
