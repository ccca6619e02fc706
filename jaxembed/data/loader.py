"""Strided sliding windows over a token stream, served by Grain.

The windows themselves (``tokenize``, ``as_token_ids``, ``StridedWindows``,
``WindowBatches``) live in ``jaxembed.data.windows``. Grain costs tens of microseconds per element, more than a small batch
takes to gather, so each Grain element of ``create_dataloader`` is a *chunk*
of many batches (about ``CHUNK_TOKENS`` tokens) gathered at once, which
``Unbatch`` cuts back into batches.

Pipeline: ``WindowBatches`` (random access: batch index -> batch; also a
``MapDataset`` through ``make_dataset``) -> ``WindowBatchChunks`` ->
``grain.MapDataset.source`` -> ``to_iter_dataset`` -> optional
``mp_prefetch`` worker processes -> ``Unbatch``. Iterators are checkpointable
with ``get_state()`` / ``set_state()``.

Example:
  >>> from jaxembed.data.loader import create_dataloader
  >>> loader = create_dataloader("to be or not to be " * 20, batch_size=2,
  ...                            max_length=4, stride=4, shuffle=False)
  >>> inputs_BxL, targets_BxL = next(iter(loader))
  >>> inputs_BxL.shape, inputs_BxL.dtype
  ((2, 4), dtype('int32'))
"""

from __future__ import annotations

import ast
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
import tiktoken

from jaxembed.data._grain import close_at_exit, grain
from jaxembed.data.windows import (
    Batch,
    StridedWindows,
    WindowBatches,
    as_token_ids,
    split_spans,
)
from jaxembed.errors import InvalidArgumentError, InvalidTypeError, check_int, check_positive_int

__all__ = [
    "CHUNK_TOKENS",
    "Unbatch",
    "WindowBatchChunks",
    "create_dataloader",
    "make_dataset",
    "window_batches",
]


class WindowBatchChunks:
    """Grain source whose element ``j`` is many consecutive batches at once.

    Grain costs tens of microseconds per element, more than gathering a small
    batch; one element per ``batches_per_chunk`` batches (one numpy gather)
    makes that cost vanish. ``Unbatch`` cuts the chunks back into batches.
    """

    def __init__(self, batches: WindowBatches, batches_per_chunk: int):
        self.batches = batches
        self.batches_per_chunk = check_positive_int(batches_per_chunk, "batches_per_chunk")
        self.chunks_per_epoch = -(-batches.batches_per_epoch // self.batches_per_chunk)

    def __len__(self) -> int:
        if self.batches.num_epochs is None:
            return sys.maxsize
        return self.chunks_per_epoch * self.batches.num_epochs

    def __getitem__(self, index: int) -> np.ndarray:
        epoch, c = divmod(index, self.chunks_per_epoch)
        first = c * self.batches_per_chunk
        stop = min(first + self.batches_per_chunk, self.batches.batches_per_epoch)
        return self.batches.spans(epoch, first, stop)


class Unbatch(grain.IterDataset):
    """Cuts chunks of stacked windows (``spans_NxL1``) into ``(inputs, targets)`` batches.

    Its iterator's state is the parent's state at the start of the current
    chunk plus how many batches of it were handed out, so a restored iterator
    continues at exactly the next batch, whatever the parent is (in-process
    or Grain worker processes).
    """

    def __init__(
        self, parent: grain.IterDataset, batch_size: int, *, settings: dict | None = None, length: int | None = None
    ):
        super().__init__(parent)
        self.batch_size = batch_size
        self.settings = settings or {}
        self._length = length

    def __len__(self) -> int:
        """Batches in all epochs of a finite loader.

        Raises:
          TypeError: the loader repeats forever (``num_epochs=None``).
        """
        if self._length is None:
            raise InvalidTypeError("this loader repeats forever (num_epochs=None), so it has no len().")
        return self._length

    def __iter__(self) -> grain.DatasetIterator:
        return close_at_exit(_UnbatchIterator(self._parent.__iter__(), self.batch_size, self.settings))


class _UnbatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, settings: dict | None = None):
        super().__init__(parent)
        self._batch_size = batch_size
        self._settings = settings or {}
        self._chunk_state = parent.get_state()
        self._inputs, self._targets, self._offset = None, None, 0

    def _next_chunk(self) -> None:
        # Split once per chunk: each batch is then two contiguous row slices.
        self._inputs, self._targets = split_spans(next(self._parent))
        self._offset = 0

    def __next__(self) -> Batch:
        if self._inputs is None or self._offset * self._batch_size >= len(self._inputs):
            self._chunk_state = self._parent.get_state()
            self._next_chunk()
        rows = slice(self._offset * self._batch_size, (self._offset + 1) * self._batch_size)
        self._offset += 1
        return self._inputs[rows], self._targets[rows]

    def get_state(self) -> dict:
        return {"chunk_start": self._chunk_state, "batches_taken": self._offset, "loader": self._settings}

    def set_state(self, state: dict) -> None:
        # A state from another loader would silently replay other batches: refuse it, naming what differs.
        saved = state.get("loader")
        if saved is not None and saved != self._settings:
            differ = ", ".join(
                f"{k}={saved.get(k)!r} in the state, {self._settings.get(k)!r} here"
                for k in sorted(saved.keys() | self._settings.keys())
                if saved.get(k) != self._settings.get(k)
            )
            raise InvalidArgumentError(f"this iterator state comes from a loader built with other settings ({differ}).")
        self._parent.set_state(state["chunk_start"])
        self._chunk_state, self._inputs, self._targets, self._offset = state["chunk_start"], None, None, 0
        if state["batches_taken"]:
            self._next_chunk()
            self._offset = state["batches_taken"]

    def close(self) -> None:
        self._parent.close()


def _default_shard() -> tuple[int, int]:
    import jax  # Deferred: importing jax is slow and the data path needs it only here.

    return jax.process_index(), jax.process_count()


def window_batches(
    text_or_ids: str | Sequence[int] | np.ndarray,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
    num_epochs: int | None = 1,
    tokenizer: str | tiktoken.Encoding = "gpt2",
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> WindowBatches:
    """The random-access batch source ``create_dataloader`` reads from.

    See ``create_dataloader`` for the arguments.

    Example:
      >>> src = window_batches(np.arange(100), batch_size=4, max_length=8, stride=8,
      ...                      shuffle=False)
      >>> len(src), src[0][1][0].tolist()
      (3, [1, 2, 3, 4, 5, 6, 7, 8])
    """
    if shard_index is None or shard_count is None:
        default_index, default_count = _default_shard()
        shard_index = default_index if shard_index is None else shard_index
        shard_count = default_count if shard_count is None else shard_count
    ids = as_token_ids(text_or_ids, tokenizer)
    windows = StridedWindows(ids, max_length=max_length, stride=stride)
    return WindowBatches(
        windows,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
    )


def make_dataset(*args, **kwargs) -> grain.MapDataset:
    """A Grain ``MapDataset`` of ``(inputs_BxL, targets_BxL)`` batches.

    Random access by batch index; ``len()`` is the number of batches over all
    epochs. Takes ``window_batches``'s (and ``create_dataloader``'s) arguments.

    Example:
      >>> ds = make_dataset(np.arange(100), batch_size=4, max_length=8, stride=8,
      ...                   shuffle=False)
      >>> len(ds), ds[2][0].shape
      (3, (4, 8))
    """
    return grain.MapDataset.source(window_batches(*args, **kwargs))


#: Tokens gathered per Grain element by ``create_dataloader``.
CHUNK_TOKENS = 1 << 18


def create_dataloader(
    text_or_ids: str | Sequence[int] | np.ndarray,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    num_epochs: int | None = 1,
    tokenizer: str | tiktoken.Encoding = "gpt2",
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.IterDataset:
    """The seed's ``create_dataloader``, on Grain.

    Args:
      text_or_ids: text to tokenize, or token ids already made.
      batch_size: windows per batch of this process (its shard): with ``shard_count`` processes a
        global batch holds ``batch_size * shard_count`` windows (``data.pipeline.get_datasets``
        divides the config's global ``data.batch_size`` among the processes for you).
      max_length: tokens per window (the context length L).
      stride: tokens between the starts of consecutive windows.
      shuffle: visit windows in a random order drawn from ``(seed, epoch)``.
      drop_last: drop each epoch's final short batch.
      num_workers: Grain worker processes (0: gather in this process).
      seed: shuffling seed.
      num_epochs: passes over the data; ``None`` repeats forever.
      tokenizer: an encoding name for ``jaxembed.text.tokenizer.get_encoding``, or a ``tiktoken.Encoding``.
      shard_index, shard_count: this process's shard; default
        ``jax.process_index()`` and ``jax.process_count()``.

    Returns:
      A Grain ``IterDataset``; ``iter()`` of it is a checkpointable iterator
      (``get_state`` / ``set_state``) of ``(inputs_BxL, targets_BxL)``, both
      int32 numpy arrays of shape ``[batch_size, max_length]`` (a final batch
      is shorter when ``drop_last=False``), with
      ``targets_BxL[:, :-1] == inputs_BxL[:, 1:]``.

    Raises:
      ValueError: a size argument is < 1, the text is shorter than one
        window, no full batch fits, or ids lie outside the vocabulary.

    Example:
      >>> loader = create_dataloader("Romeo, Romeo! wherefore art thou Romeo?",
      ...                            batch_size=2, max_length=4, stride=4,
      ...                            shuffle=False)
      >>> [inputs.shape for inputs, _ in loader]
      [(2, 4)]
    """
    check_int(num_workers, "num_workers", minimum=0)
    batches = window_batches(
        text_or_ids,
        batch_size,
        max_length,
        stride,
        shuffle,
        drop_last,
        seed,
        num_epochs,
        tokenizer,
        shard_index,
        shard_count,
    )
    per_chunk = max(1, CHUNK_TOKENS // (batch_size * (max_length + 1)))
    chunks = grain.MapDataset.source(WindowBatchChunks(batches, per_chunk))
    # The tokens live in memory: reader threads would only contend for the GIL.
    loader = chunks.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if num_workers > 0:
        _check_spawn_safe(num_workers)
        loader = _with_worker_processes(loader, num_workers)
    settings = {
        "batch_size": batch_size,
        "max_length": max_length,
        "stride": stride,
        "shuffle": bool(shuffle),
        "drop_last": bool(drop_last),
        "seed": int(seed),
        "windows": len(batches.windows),
        "shard_index": batches.shard_index,
        "shard_count": batches.shard_count,
    }
    length = None if num_epochs is None else len(batches)
    return Unbatch(loader, batch_size, settings=settings, length=length)


def _check_spawn_safe(num_workers: int) -> None:
    """Refuses worker processes that would hang: Grain spawns them, and spawn re-runs the main script.

    A script whose loader code is not under ``if __name__ == "__main__":``
    (or a program read from stdin) makes every worker fail while starting,
    and the parent would then wait for batches forever.

    Raises:
      ValueError: the main program is not a file with such a guard.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None and path.endswith("__main__.py"):
        return  # interactive, a notebook, `python -c`, or a package's __main__: spawn does not re-run it
    advice = (
        f"num_workers={num_workers} starts Grain worker processes, which re-run the main program (spawn); "
        '{problem}: put the code that builds and reads the loader under `if __name__ == "__main__":` '
        "in a script file, or use num_workers=0."
    )
    if not os.path.isfile(path):
        raise InvalidArgumentError(
            advice.format(problem=f"the main program was read from {path}, which they cannot re-read")
        )
    try:
        tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return
    guarded = any(
        isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)
        for node in tree.body
    )
    if not guarded:
        raise InvalidArgumentError(
            advice.format(
                problem=f'{path} has no `if __name__ == "__main__":` guard, so they would start the loader again'
            )
        )


def _with_worker_processes(loader: grain.IterDataset, num_workers: int) -> grain.IterDataset:
    from absl import flags

    # Grain's workers read absl flags; outside an absl app they are unparsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    loader = loader.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    # Batches are small: copying them through the queue is cheaper than shared
    # memory, and avoids SharedMemoryArray's noisy finalisers.
    options = grain.experimental.DatasetOptions(min_shm_size=sys.maxsize)
    return grain.experimental.WithOptionsIterDataset(loader, options)
