"""Orbax checkpoints of the train state and the Grain iterator state.

Each checkpoint holds the train state (params, optimiser state, step, PRNG
key) and, per process, the Grain iterator state of the batch that step
consumed last, so a resumed run sees exactly the batches it would have seen.
Orbax writes each step to a temporary directory and renames it when complete;
a checkpoint that still fails to restore is moved aside (never deleted) and
the next older one is used.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2)
  >>> ckpt.save(1, {"w": jnp.ones(3)}, data_state={"next_index": 1})
  >>> ckpt.wait()
  >>> state, data_state, step = ckpt.restore({"w": jnp.zeros(3)})
  >>> step, data_state, state["w"].tolist()
  (1, {'next_index': 1}, [1.0, 1.0, 1.0])
  >>> ckpt.close()
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint could be restored."""


class _IteratorState:
    """Carries a captured Grain iterator state through Grain's orbax handler.

    The live iterator runs ahead of training (device prefetch), so the state
    to save is the one captured when the last consumed batch was drawn.
    """

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state)

    def start_prefetch(self) -> None:
        pass


def _quiet_failed_restore_noise() -> None:
    """Silences the leftovers of a restore that failed on a damaged step.

    When one array of a damaged step fails to read, orbax gives up while the
    other reads are still in flight. As they finish, Python prints
    ``RuntimeError: Event loop is closed`` tracebacks (tensorstore calling back
    into orbax's closed event loop, an "unraisable" exception) and asyncio logs
    ``Task exception was never retrieved`` for orbax's ``async_deserialize``
    tasks, possibly long after ``restore`` returned. Both are harmless and would
    bury the one-line warning or error; this drops exactly those and passes
    everything else on. Installed once, by the first ``restore``: the
    tracebacks can appear before orbax even raises.
    """
    global _ASYNCIO_FILTER_ADDED
    if not _ASYNCIO_FILTER_ADDED:
        logging.getLogger("asyncio").addFilter(
            lambda record: (
                not (
                    str(record.msg).startswith("Task exception was never retrieved")
                    and "async_deserialize" in str(record.msg)
                )
            )
        )
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


class Checkpointer:
    """Saves and restores ``(train_state, data_state)`` under ``directory``.

    Args:
      directory: where step directories go (created if missing).
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "data"),
        )

    def steps(self) -> list[int]:
        """Complete checkpoint steps on disk, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None) -> None:
        """Starts saving ``state`` as ``step`` (asynchronously; see ``wait``)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(_IteratorState(data_state)),
            ),
        )

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def restore(self, abstract_state: Any, *, read_only: bool = False) -> tuple[Any, dict | None, int]:
        """Restores the newest readable checkpoint into ``abstract_state``'s layout.

        ``abstract_state`` is a pytree of arrays or ``jax.ShapeDtypeStruct``
        (with shardings, to restore straight into a sharded layout).
        ``read_only`` restores the train state alone (``data_state`` is then
        ``None``) and leaves unreadable checkpoints where they are.

        Returns:
          ``(state, data_state, step)``.

        Raises:
          CheckpointError: checkpoints exist but none can be read.
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}.")
        _quiet_failed_restore_noise()
        failures = []
        for step in reversed(steps):
            holder = _IteratorState()
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if not read_only:
                items["data"] = grain.checkpoint.CheckpointRestore(holder)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # orbax/tensorstore raise many types for a damaged step.
                failures.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
                if not read_only:
                    self._set_aside(step, e)
                continue
            return restored.state, holder.state, step
        raise CheckpointError(
            f"none of the checkpoints in {self.directory} could be restored:\n  "
            + "\n  ".join(failures)
            + (
                ""
                if read_only
                else "\nThey were moved aside (renamed *.unreadable-*); start a new "
                "run with another --workdir, or delete the checkpoints to start over."
            )
        )

    def _set_aside(self, step: int, error: Exception) -> None:
        # Only the primary process renames; every process skips the step.
        source = self.directory / str(step)
        message = (
            f"checkpoint step {step} in {self.directory} is unreadable "
            f"({type(error).__name__}); falling back to an older one."
        )
        print(f"warning: {message}", flush=True)
        if jax.process_index() == 0 and source.exists():
            source.rename(self.directory / f"{step}.unreadable-{int(time.time())}")
        self._manager.reload()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()
