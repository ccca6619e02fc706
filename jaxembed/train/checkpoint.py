"""Orbax checkpoints of the train state and the Grain iterator state.

Each checkpoint holds the train state (params, optimiser state, step, PRNG
key) and, per process, the state of the Grain iterator that fed the run
(written by Grain's own orbax handler as ``process_i-of-N.json``), so a
resumed run sees exactly the batches it would have seen.
Orbax writes each step to a temporary directory and renames it when complete;
a checkpoint that still fails to restore is moved aside (never deleted) and
the next older one is used.

Example:
  >>> import tempfile, grain, jax.numpy as jnp
  >>> iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
  >>> next(iterator), next(iterator)
  (0, 1)
  >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2)
  >>> ckpt.save(1, {"w": jnp.ones(3)}, iterator)
  >>> ckpt.wait()
  >>> fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
  >>> state, step = ckpt.restore({"w": jnp.zeros(3)}, fresh)
  >>> step, state["w"].tolist(), next(fresh)
  (1, [1.0, 1.0, 1.0], 2)
  >>> ckpt.close()
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import sys
import time
import traceback
from typing import Any, Protocol

import jax
import orbax.checkpoint as ocp

from jaxembed.data._grain import grain
from jaxembed.errors import JaxembedError
from jaxembed.train.workdir import SET_ASIDE_MARK

log = logging.getLogger(__name__)


class CheckpointError(JaxembedError, RuntimeError):
    """No usable checkpoint could be restored."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, permission lost, ...); older ones are intact."""


def _reason(error: BaseException) -> str:
    text = str(error)
    for needle, reason in (
        ("No space left on device", "no space left on device"),
        ("Permission denied", "permission denied"),
        ("Read-only file system", "read-only file system"),
        ("Disk quota exceeded", "disk quota exceeded"),
    ):
        if needle in text:
            return reason
    return f"{type(error).__name__}: {text[:200]}"


def _val_loss(metrics: dict) -> float:
    return float(metrics["val_loss"])


class DataIterator(Protocol):
    """What a checkpoint needs of a data iterator: Grain's ``DatasetIterator`` has both."""

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


def _quiet_failed_io_noise() -> None:
    """Silences the leftovers of a restore that failed on a damaged step.

    When one array of a damaged step fails to read, orbax gives up while the
    other reads are still in flight. As they finish, Python prints
    ``RuntimeError: Event loop is closed`` tracebacks (tensorstore calling back
    into orbax's closed event loop, an "unraisable" exception) and asyncio logs
    ``Task exception was never retrieved`` for orbax's ``async_deserialize``
    tasks, possibly long after ``restore`` returned. A save that fails (a full
    disk) leaves the same logs (``Task`` and ``_GatheringFuture exception was
    never retrieved``) for its other writes, whenever they are collected, which
    may be after the one-line error. All are repeats of the error jaxembed
    reports and would bury it; this drops exactly those (asyncio's "never
    retrieved" records whose exception was raised inside orbax) and passes
    everything else on. Installed once, by the first ``Checkpointer``: the
    tracebacks can appear before orbax even raises.
    """
    global _ASYNCIO_FILTER_ADDED
    if not _ASYNCIO_FILTER_ADDED:
        logging.getLogger("asyncio").addFilter(lambda record: not _is_orbax_leftover(record))
        _ASYNCIO_FILTER_ADDED = True
    previous = sys.unraisablehook
    if getattr(previous, "_jaxembed_quiet", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and unraisable.object is None:
            return
        previous(unraisable)

    hook._jaxembed_quiet = True
    sys.unraisablehook = hook


_ASYNCIO_FILTER_ADDED = False


def _is_orbax_leftover(record: logging.LogRecord) -> bool:
    """An asyncio "exception was never retrieved" record for an exception raised inside orbax."""
    if "exception was never retrieved" not in str(record.msg) or not record.exc_info:
        return False
    error = record.exc_info[1]
    frames = traceback.extract_tb(error.__traceback__) if error is not None else []
    return any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)


class Checkpointer:
    """Saves and restores the train state and the data iterator's state under ``directory``.

    Args:
      directory: where step directories go (created if missing).
      keep: how many recent checkpoints to keep. The checkpoint with the
        lowest ``val_loss`` among those saved with ``metrics`` is kept too,
        whatever its age (see ``best_step``).
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        # In orbax 0.12.8, max_to_keep together with best_fn keeps the `keep` BEST steps, not the latest
        # (its default policy is BestN alone). The explicit policy keeps the `keep` latest OR the single best;
        # best_fn stays set because orbax only writes a save's metrics, and best_step() only ranks, with it.
        best = ocp.checkpoint_managers.BestN(
            get_metric_fn=_val_loss, reverse=True, n=1, keep_checkpoints_without_metrics=False
        )
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([ocp.checkpoint_managers.LatestN(n=keep), best])
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True, best_fn=_val_loss, best_mode="min", preservation_policy=policy
            ),
            item_names=("state", "data"),
        )
        self._pending: int | None = None
        self._failed: CheckpointWriteError | None = None
        _quiet_failed_io_noise()  # a failed background write leaves the same tracebacks as a failed read

    def steps(self) -> list[int]:
        """Complete checkpoint steps on disk, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The complete step with the lowest saved ``val_loss`` (earliest on ties), or ``None`` if none has metrics."""
        self._manager.reload()
        scored = [(float(m["val_loss"]), s) for s in self._manager.all_steps() if (m := self._manager.metrics(s))]
        return min(scored)[1] if scored else None

    def save(
        self, step: int, state: Any, data_iterator: DataIterator | None = None, *, metrics: dict | None = None
    ) -> None:
        """Starts saving ``state`` (and ``data_iterator``'s state) as ``step``.

        ``metrics`` (``{"val_loss": float}``) is stored with the step and
        decides which checkpoint is the best one to keep.

        The iterator's state is read now; the arrays are written in the
        background (see ``wait``). Give the iterator whose last batch the step
        consumed: a Grain iterator behind a thread prefetch reports the state
        after the last element it handed out, not how far it has read ahead.
        """
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        with self._writing(step):
            self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)

    def wait(self) -> None:
        """Blocks until pending saves are on disk.

        Raises:
          CheckpointWriteError: a save failed; the message names the last good step.
        """
        with self._writing(self._pending):
            self._manager.wait_until_finished()

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """Turns any failure of orbax's (possibly background) writes into one clear error."""
        previous = self._pending
        if step is not None and self._failed is None:
            self._pending = step
        try:
            yield
        except Exception as e:  # orbax/tensorstore raise many types (ValueError for ENOSPC, OSError, ...).
            if self._failed is not None:
                raise self._failed from None
            complete = self._complete_steps()
            # A background write's failure surfaces at the next save: name the step that was lost.
            failed = previous if previous is not None and previous not in complete else self._pending
            good = [s for s in complete if s != failed]
            last = f"The last good checkpoint is step {good[-1]}" if good else "No checkpoint was completed"
            self._failed = CheckpointWriteError(
                f"could not write checkpoint step {failed} in {self.directory} ({_reason(e)}). "
                f"{last}; fix the problem (e.g. free disk space) and rerun the same command to resume"
                + (" from it." if good else ".")
            )
            raise self._failed from None

    def _complete_steps(self) -> list[int]:
        # A half-written step stays in orbax's *.orbax-checkpoint-tmp directory, never under its number.
        return sorted(int(p.name) for p in self.directory.glob("*") if p.name.isdigit() and p.is_dir())

    def restore(
        self,
        abstract_state: Any,
        data_iterator: DataIterator | None = None,
        *,
        read_only: bool = False,
        step: int | None = None,
    ) -> tuple[Any, int]:
        """Restores the newest readable checkpoint (or exactly ``step``) into ``abstract_state``'s layout.

        Args:
          abstract_state: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with
            shardings, to restore straight into a sharded layout).
          data_iterator: if given, its state is set to the one saved with the step.
          read_only: leave unreadable checkpoints where they are (for readers
            such as ``jaxembed neighbors``).
          step: restore this step only, with no fallback to an older one.

        Returns:
          ``(state, step)``.

        Raises:
          CheckpointError: checkpoints exist but none can be read, ``step`` is not one of them, or
            (with ``data_iterator``) the newest was written by another number of processes: then
            nothing is set aside.
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}.")
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"no checkpoint for step {step} in {self.directory}; available steps: "
                    + ", ".join(map(str, steps))
                    + "."
                )
            steps = [step]
        if data_iterator is not None:
            self._check_process_count(steps[-1])
        _quiet_failed_io_noise()
        failures = []
        for step in reversed(steps):
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # orbax/tensorstore raise many types for a damaged step.
                failures.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
                if read_only:
                    log.warning(
                        "checkpoint step %d in %s is unreadable (%s); reading an older one.",
                        step,
                        self.directory,
                        type(e).__name__,
                    )
                else:
                    self._set_aside(step, e)
                continue
            return restored.state, step
        raise CheckpointError(
            f"none of the checkpoints in {self.directory} could be restored:\n  "
            + "\n  ".join(failures)
            + (
                ""
                if read_only
                else f"\nThey were moved aside (renamed *{SET_ASIDE_MARK}*); start a new "
                "run with another --workdir, or delete the checkpoints to start over."
            )
        )

    def _check_process_count(self, step: int) -> None:
        """Refuses a step whose data iterator states come from another number of processes.

        Each process saves its own Grain iterator state (``data/process_I-of-N.json``); with another
        process count the restore fails like a damaged step would, and every checkpoint would be
        set aside, so the check comes first and changes nothing.
        """
        saved = {
            int(m.group(1))
            for p in (self.directory / str(step) / "data").glob("process_*-of-*.json")
            if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", p.name))
        }
        now = jax.process_count()
        if len(saved) == 1 and (count := saved.pop()) != now:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} was written by {count} processes (each saved its own "
                f"place in the data) and this run has {now}: resume with {count} processes, or start a new run with "
                "another --workdir. Nothing was changed."
            )

    def _set_aside(self, step: int, error: Exception) -> None:
        # Only the primary process renames; every process skips the step.
        source = self.directory / str(step)
        message = (
            f"checkpoint step {step} in {self.directory} is unreadable "
            f"({type(error).__name__}); falling back to an older one."
        )
        log.warning(message)
        if jax.process_index() == 0 and source.exists():
            source.rename(self.directory / f"{step}{SET_ASIDE_MARK}{int(time.time())}")
        self._manager.reload()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources.

        Raises:
          CheckpointWriteError: a pending save failed (not raised again if it already was).
        """
        try:
            if self._failed is None:
                self.wait()
        finally:
            with contextlib.suppress(Exception):
                self._manager.close()
