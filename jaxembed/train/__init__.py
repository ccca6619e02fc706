"""Training: the compiled step, the loop, checkpoints, the run directory, TensorBoard, plan, reading a run.

The fourth stage of the data flow (text -> data -> nn -> train -> report). One module per concept:
``trainer`` (``Trainer``: the one compiled step with shardings and donation; the optimiser and
mesh), ``loop`` (``train_and_evaluate``), ``checkpoint`` (orbax: train state + Grain iterator
state), ``workdir`` (every file a run keeps, the lock and the resume rules), ``tensorboard``
(event files, projector, profiler), ``plan`` (memory and FLOPs before a run), ``compilation_cache``
(compiled programs kept on disk for re-runs), ``allocator`` (host memory for XLA:CPU's per-step
buffers, set once at process start) and ``run`` (``load_run``: a finished run, read-only).

Example:
  >>> from jaxembed import train
  >>> from jaxembed.config import base_config
  >>> schedule = train.learning_rate_schedule(base_config().optim, total_steps=100)
  >>> float(schedule(0)), round(float(schedule(50)), 6)
  (0.0, 0.01)
"""

from jaxembed.train import allocator, checkpoint, compilation_cache, loop, plan, run, tensorboard, trainer, workdir
from jaxembed.train.allocator import tune_cpu_allocator
from jaxembed.train.checkpoint import Checkpointer, CheckpointError, CheckpointWriteError
from jaxembed.train.compilation_cache import enable_compilation_cache
from jaxembed.train.loop import Preempted, TrainingError, TrainResult, positions_shuffled_loss, train_and_evaluate
from jaxembed.train.plan import format_plan
from jaxembed.train.run import Run, load_run, parse_step
from jaxembed.train.trainer import (
    Trainer,
    TrainState,
    create_train_state,
    eval_step,
    learning_rate_schedule,
    make_mesh,
    make_optimizer,
    train_step,
)
from jaxembed.train.workdir import WorkdirError, read_metrics

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "Checkpointer",
    "Preempted",
    "Run",
    "TrainResult",
    "TrainState",
    "Trainer",
    "TrainingError",
    "WorkdirError",
    "allocator",
    "checkpoint",
    "compilation_cache",
    "create_train_state",
    "enable_compilation_cache",
    "eval_step",
    "format_plan",
    "learning_rate_schedule",
    "load_run",
    "loop",
    "make_mesh",
    "make_optimizer",
    "parse_step",
    "plan",
    "positions_shuffled_loss",
    "read_metrics",
    "run",
    "tensorboard",
    "train_and_evaluate",
    "train_step",
    "trainer",
    "tune_cpu_allocator",
    "workdir",
]
