"""The training input pipeline: corpus -> tokens -> splits -> Grain -> device batches.

One entry point, ``get_datasets(config, mesh)``, in the spirit of Flax's
``examples/lm1b/input_pipeline.get_datasets``: it loads the configured text,
tokenizes it, holds out the end as validation, and returns a checkpointable
iterator of global training batches already placed on the mesh, a fixed list
of validation batches, and the ``Splits`` (token ids and counts) the report
and the model's vocabulary need.

Placement on the device runs in a Grain thread-prefetch stage (the same
stages as ``grain.experimental.device_put``), so the next batches transfer
while the step runs, and the iterator's ``get_state()`` is still exactly the
state after the last batch handed out: what a checkpoint must store.

Example:
  >>> from jaxembed.config import base_config
  >>> from jaxembed.trainer import make_mesh
  >>> config = base_config()
  >>> config.data.max_length, config.data.stride, config.data.batch_size = 8, 8, 4
  >>> train_it, eval_batches, splits = get_datasets(config, make_mesh(), text="to be or not to be " * 200)
  >>> inputs_BxL, targets_BxL = next(train_it)
  >>> inputs_BxL.shape, len(eval_batches), len(splits.val_ids)
  ((4, 8), 3, 120)
  >>> train_it.close()
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxembed import corpus, data, tokenizer


@dataclasses.dataclass(frozen=True)
class Splits:
    """Token ids of the training and held-out parts of the corpus.

    Attributes:
      train_ids: ``[N_train]`` int32 ids the model trains on.
      val_ids: ``[N_val]`` int32 held-out ids (the end of the corpus).
      vocab_size: the tokenizer's vocabulary size (GPT-2: 50,257).
      active_ids: with ``model.active_vocab``, the sorted tokenizer ids that
        occur in the corpus; ``train_ids``/``val_ids`` then hold compact ids
        ``0..K-1`` indexing it. ``None`` otherwise.
    """

    train_ids: np.ndarray
    val_ids: np.ndarray
    vocab_size: int
    active_ids: np.ndarray | None = None

    @property
    def model_vocab_size(self) -> int:
        """Rows the model's token table needs: ``K`` with an active vocabulary, else ``vocab_size``."""
        return self.vocab_size if self.active_ids is None else len(self.active_ids)

    def train_counts(self) -> np.ndarray:
        """``counts_V``: how often each tokenizer id occurs in the training split.

        Example:
          >>> Splits(np.array([2, 0, 2]), np.array([1]), vocab_size=4).train_counts().tolist()
          [1, 0, 2, 0]
        """
        ids = self.train_ids if self.active_ids is None else self.active_ids[self.train_ids]
        return np.bincount(ids, minlength=self.vocab_size)


def load_corpus_text(config: ml_collections.ConfigDict) -> str:
    """The text the config names: ``data.text`` (a path), else the named ``data.corpus``.

    Raises:
      FileNotFoundError, ValueError, corpus.CorpusUnavailableError: see ``corpus.load_text``.
    """
    return corpus.load_text(config.data.text or config.data.corpus)


def split_corpus(text: str, config: ml_collections.ConfigDict) -> Splits:
    """Tokenizes ``text`` and holds out its last ``data.val_fraction`` of tokens.

    Project Gutenberg texts are cut to their body first, so the held-out
    slice is the play, never the licence.

    Raises:
      ValueError: ``data.val_fraction`` is not in (0, 1).

    Example:
      >>> from jaxembed.config import base_config
      >>> s = split_corpus(" Romeo" * 1000, base_config())
      >>> len(s.train_ids), len(s.val_ids)
      (900, 100)
    """
    fraction = config.data.val_fraction
    if not 0 < fraction < 1:
        raise ValueError(f"data.val_fraction={fraction} is not allowed; it must lie in (0, 1).")
    if corpus.has_gutenberg_markers(text):
        text = corpus.strip_gutenberg(text)
    ids = data.tokenize(text, config.data.tokenizer)
    num_val = int(round(len(ids) * fraction))
    vocab_size = tokenizer.get_encoding(config.data.tokenizer).n_vocab
    return Splits(ids[: len(ids) - num_val], ids[len(ids) - num_val :], vocab_size)


def with_active_vocabulary(splits: Splits) -> Splits:
    """Re-indexes the splits onto the ids that occur in them (``model.active_vocab``).

    Example:
      >>> s = with_active_vocabulary(Splits(np.array([7, 3, 7]), np.array([9]), vocab_size=10))
      >>> s.active_ids.tolist(), s.train_ids.tolist(), s.val_ids.tolist()
      ([3, 7, 9], [1, 0, 1], [2])
    """
    active_ids = np.unique(np.concatenate([splits.train_ids, splits.val_ids]))
    compact = (np.searchsorted(active_ids, ids).astype(np.int32) for ids in (splits.train_ids, splits.val_ids))
    return Splits(*compact, vocab_size=splits.vocab_size, active_ids=active_ids)


def expand_active(token_KxD: np.ndarray, active_ids: np.ndarray | None, vocab_size: int) -> np.ndarray:
    """Places the rows of a compact (active-vocabulary) table at their tokenizer ids.

    Rows of ids absent from ``active_ids`` are zero. With ``active_ids=None``
    the table is returned as it is.

    Example:
      >>> expand_active(np.ones((2, 1)), np.array([1, 3]), vocab_size=4)[:, 0].tolist()
      [0.0, 1.0, 0.0, 1.0]
    """
    if active_ids is None:
        return token_KxD
    token_VxD = np.zeros((vocab_size, token_KxD.shape[1]), token_KxD.dtype)
    token_VxD[active_ids] = token_KxD
    return token_VxD


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Rows of each global batch this process reads.

    Raises:
      ValueError: ``data.batch_size`` does not split over the mesh's ``data``
        axis and the processes.

    Example:
      >>> from jaxembed.trainer import make_mesh
      >>> local_batch_size(16, make_mesh())
      16
    """
    data_size, processes = mesh.shape["data"], jax.process_count()
    if global_batch % data_size or global_batch % processes:
        raise ValueError(
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
      >>> from jaxembed.trainer import make_mesh
      >>> x_BxL = np.zeros((2, 3), np.int32)
      >>> [a.shape for a in global_batch((x_BxL, x_BxL), batch_sharding(make_mesh()))]
      [(2, 3), (2, 3)]
    """
    return tuple(jax.make_array_from_process_local_data(sharding, x) for x in batch)


def _loader(ids: np.ndarray, config: ml_collections.ConfigDict, batch: int, stride: int, **kwargs) -> grain.IterDataset:
    return data.create_dataloader(
        ids,
        batch_size=batch,
        max_length=config.data.max_length,
        stride=stride,
        tokenizer=config.data.tokenizer,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        **kwargs,
    )


def make_train_iterator(
    ids: np.ndarray, config: ml_collections.ConfigDict, mesh: Mesh, *, prefetch: int = 2
) -> grain.DatasetIterator:
    """An endless, shuffled, checkpointable iterator of global training batches on ``mesh``.

    ``prefetch`` batches are gathered and placed on the devices by a Grain
    thread while the step runs; ``get_state()`` is the state after the last
    batch handed out. Call ``close()`` when done.

    Returns:
      A Grain iterator of ``(inputs_BxL, targets_BxL)`` int32 ``jax.Array``
      sharded as ``batch_sharding(mesh)``, with ``B = data.batch_size``.
    """
    local_batch = local_batch_size(config.data.batch_size, mesh)
    loader = _loader(
        ids,
        config,
        local_batch,
        config.data.stride,
        shuffle=True,
        seed=config.seed,
        num_epochs=None,
        num_workers=config.data.num_workers,
    )
    sharding = batch_sharding(mesh)
    on_device = loader.map(lambda batch: global_batch(batch, sharding))
    return iter(grain.experimental.ThreadPrefetchIterDataset(on_device, prefetch_buffer_size=prefetch))


def make_eval_batches(ids: np.ndarray, config: ml_collections.ConfigDict, mesh: Mesh) -> list[tuple[jax.Array, ...]]:
    """The fixed validation batches: non-overlapping windows in order, at most ``train.eval_batches``.

    Raises:
      ValueError: the held-out slice is too short for one batch.
    """
    local_batch = local_batch_size(config.data.batch_size, mesh)
    windows = data.num_windows(len(ids), config.data.max_length, config.data.max_length)
    available = (windows // jax.process_count()) // local_batch
    if available < 1:
        raise ValueError(
            f"the held-out slice has {len(ids)} tokens, too few for one validation batch of "
            f"{local_batch} x {config.data.max_length}; raise data.val_fraction "
            f"(now {config.data.val_fraction}) or use a longer text."
        )
    loader = _loader(ids, config, local_batch, config.data.max_length, shuffle=False, num_epochs=1)
    sharding = batch_sharding(mesh)
    count = min(available, config.train.eval_batches)
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

    Returns:
      ``(train_iterator, eval_batches, splits)``; see ``make_train_iterator``,
      ``make_eval_batches`` and ``Splits``.

    Raises:
      ValueError: a data setting does not fit the corpus or the mesh.
      FileNotFoundError, corpus.CorpusUnavailableError: the text cannot be read.
    """
    if text is None:
        text = load_corpus_text(config)
    splits = split_corpus(text, config)
    if config.model.active_vocab:
        # The model sees compact ids 0..K-1: its table, softmax and AdamW cover K rows.
        splits = with_active_vocabulary(splits)
    eval_batches = make_eval_batches(splits.val_ids, config, mesh)
    return make_train_iterator(splits.train_ids, config, mesh), eval_batches, splits
