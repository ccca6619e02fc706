"""The training input pipeline: corpus -> tokens -> splits -> Grain -> device batches.

One entry point, ``get_datasets(config, mesh)``, in the spirit of Flax's
``examples/lm1b/input_pipeline.get_datasets``: it loads the configured corpus
(``jaxembed.data.splits.load_splits``: a text, a directory of texts, or a
memory-mapped token directory from ``jaxembed tokenize``), holds out the end
as validation, and returns a checkpointable iterator of global training
batches already placed on the mesh, a fixed list of validation batches, and
the ``Splits`` (token ids, counts, corpus fingerprint) the report, the
model's vocabulary and resume checks need. Windows are gathered straight
from a token directory's memory map: the corpus is never copied.

Placement on the device runs in a Grain thread-prefetch stage (the same
stages as ``grain.experimental.device_put``), so the next batches transfer
while the step runs, and the iterator's ``get_state()`` is still exactly the
state after the last batch handed out: what a checkpoint must store.

Example:
  >>> from jaxembed.config import base_config
  >>> from jaxembed.train.trainer import make_mesh
  >>> config = base_config()
  >>> config.data.max_length, config.data.stride, config.data.batch_size = 8, 8, 4
  >>> train_it, eval_batches, splits = get_datasets(config, make_mesh(), text="to be or not to be " * 200)
  >>> inputs_BxL, targets_BxL = next(train_it)
  >>> inputs_BxL.shape, len(eval_batches), len(splits.val_ids)
  ((4, 8), 3, 120)
  >>> train_it.close()
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxembed.data._grain import close_at_exit, grain
from jaxembed.data.loader import create_dataloader
from jaxembed.data.splits import (
    Splits,
    load_splits,
)
from jaxembed.data.windows import num_windows
from jaxembed.errors import InvalidArgumentError

__all__ = [
    "batch_sharding",
    "get_datasets",
    "global_batch",
    "local_batch_size",
    "make_eval_batches",
    "make_train_iterator",
]


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Rows of each global batch this process reads.

    Raises:
      ValueError: ``data.batch_size`` does not split over the mesh's ``data``
        axis and the processes.

    Example:
      >>> from jaxembed.train.trainer import make_mesh
      >>> local_batch_size(16, make_mesh())
      16
    """
    data_size, processes = mesh.shape["data"], jax.process_count()
    if global_batch % data_size or global_batch % processes:
        raise InvalidArgumentError(
            f"data.batch_size={global_batch} must be divisible by the mesh's data axis "
            f"({data_size} devices) and by the number of processes ({processes})."
        )
    return global_batch // processes


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches split along their first axis over the mesh's ``data`` axis."""
    return NamedSharding(mesh, P("data", None))


def global_batch(batch: tuple[np.ndarray, ...], sharding: NamedSharding) -> tuple[jax.Array, ...]:
    """This process's rows of each array, assembled into global arrays on the mesh.

    Example:
      >>> from jaxembed.train.trainer import make_mesh
      >>> x_BxL = np.zeros((2, 3), np.int32)
      >>> [a.shape for a in global_batch((x_BxL, x_BxL), batch_sharding(make_mesh()))]
      [(2, 3), (2, 3)]
    """
    return tuple(jax.make_array_from_process_local_data(sharding, x) for x in batch)


def make_train_iterator(
    ids: np.ndarray,
    mesh: Mesh,
    *,
    batch_size: int,
    max_length: int,
    stride: int,
    tokenizer: str = "gpt2",
    seed: int = 0,
    num_workers: int = 0,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """An endless, shuffled, checkpointable iterator of global training batches on ``mesh``.

    ``prefetch`` batches are gathered and placed on the devices by a Grain
    thread while the step runs; ``get_state()`` is the state after the last
    batch handed out. Call ``close()`` when done (one still open when the interpreter exits is
    closed then, before JAX shuts its backends down).

    Args:
      ids: the training token ids.
      mesh: batches are sharded over its ``data`` axis; each process reads its own rows.
      batch_size: the global batch ``B`` (``data.batch_size``).
      max_length, stride, tokenizer: the windows (``data.max_length``, ``data.stride``, ``data.tokenizer``).
      seed: the shuffle seed; num_workers: Grain worker processes.

    Returns:
      A Grain iterator of ``(inputs_BxL, targets_BxL)`` int32 ``jax.Array``
      sharded as ``batch_sharding(mesh)``.
    """
    loader = create_dataloader(
        ids,
        batch_size=local_batch_size(batch_size, mesh),
        max_length=max_length,
        stride=stride,
        tokenizer=tokenizer,
        shuffle=True,
        seed=seed,
        num_epochs=None,
        num_workers=num_workers,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    sharding = batch_sharding(mesh)
    on_device = loader.map(lambda batch: global_batch(batch, sharding))
    return close_at_exit(iter(grain.experimental.ThreadPrefetchIterDataset(on_device, prefetch_buffer_size=prefetch)))


def make_eval_batches(
    ids: np.ndarray, mesh: Mesh, *, batch_size: int, max_length: int, num_batches: int, tokenizer: str = "gpt2"
) -> list[tuple[jax.Array, ...]]:
    """The fixed validation batches: non-overlapping windows in order, at most ``num_batches``.

    Raises:
      InvalidArgumentError: the held-out slice is too short for one batch.
    """
    local_batch = local_batch_size(batch_size, mesh)
    windows = num_windows(len(ids), max_length, max_length)
    available = (windows // jax.process_count()) // local_batch
    if available < 1:
        fits = windows // jax.process_count() * jax.process_count()
        remedy = (
            f"lower data.batch_size to {fits:,} or less (or data.max_length)"
            if fits >= 1
            else "lower data.max_length, raise data.val_fraction or use a longer text"
        )
        raise InvalidArgumentError(
            f"the held-out slice has {len(ids):,} tokens, too few for one validation batch of "
            f"{local_batch} x {max_length}; {remedy}."
        )
    loader = create_dataloader(
        ids,
        batch_size=local_batch,
        max_length=max_length,
        stride=max_length,
        tokenizer=tokenizer,
        shuffle=False,
        num_epochs=1,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    sharding = batch_sharding(mesh)
    count = min(available, num_batches)
    return [global_batch(batch, sharding) for batch, _ in zip(loader, range(count))]


def get_datasets(
    config: ml_collections.ConfigDict, mesh: Mesh, *, text: str | None = None
) -> tuple[grain.DatasetIterator, list[tuple[jax.Array, ...]], Splits]:
    """The training iterator, the validation batches and the splits the config describes.

    Args:
      config: a training config (``jaxembed.config``); reads ``data.*``,
        ``model.active_vocab``, ``seed`` and ``train.eval_batches``.
      mesh: the device mesh; batches are sharded over its ``data`` axis and
        each process reads only its own rows of every global batch.
      text: train on this text instead of the configured corpus.

    ``data.tokens`` (with optional ``data.val_tokens``) trains on token
    directories; ``data.text`` may name a file, a directory or a glob.

    Returns:
      ``(train_iterator, eval_batches, splits)``; see ``make_train_iterator``,
      ``make_eval_batches`` and ``Splits``.

    Raises:
      ValueError: a data setting does not fit the corpus or the mesh, or a
        token directory is incomplete or of another tokenizer.
      FileNotFoundError, corpus.CorpusUnavailableError: the text cannot be read.
    """
    d = config.data
    splits = load_splits(config, text=text)
    eval_batches = make_eval_batches(
        splits.val_ids,
        mesh,
        batch_size=d.batch_size,
        max_length=d.max_length,
        num_batches=config.train.eval_batches,
        tokenizer=d.tokenizer,
    )
    train_iterator = make_train_iterator(
        splits.train_ids,
        mesh,
        batch_size=d.batch_size,
        max_length=d.max_length,
        stride=d.stride,
        tokenizer=d.tokenizer,
        seed=config.seed,
        num_workers=d.num_workers,
    )
    return train_iterator, eval_batches, splits
