"""Token ids and the strided windows cut from them (no Grain here).

The seed's dataset cuts a token stream into windows: for every
``i in range(0, len(ids) - max_length, stride)`` the input is
``ids[i:i + max_length]`` and the target is the same window shifted by one
token. jaxembed keeps the token stream once, as a flat array (int32, or the
uint16/uint32 of a memory-mapped ``tokens.npy``, used in place), and gathers
windows with vectorised numpy indexing, never window by window.

``StridedWindows`` is random access by window; ``WindowBatches`` orders the
windows into (shuffled, sharded) batches. ``jaxembed.data.loader`` serves those
batches through Grain.

Example:
  >>> ids = np.arange(20, dtype=np.uint16)
  >>> batches = WindowBatches(StridedWindows(ids, max_length=4, stride=4), batch_size=2, shuffle=False)
  >>> inputs_BxL, targets_BxL = batches[0]
  >>> inputs_BxL.tolist(), targets_BxL.dtype
  ([[0, 1, 2, 3], [4, 5, 6, 7]], dtype('int32'))
"""

from __future__ import annotations

import dataclasses
import mmap
import sys
from collections.abc import Sequence

import numpy as np
import tiktoken

from jaxembed.errors import InvalidArgumentError, InvalidTypeError, check_positive_int
from jaxembed.text import tokenizer as tokenizer_lib

Batch = tuple[np.ndarray, np.ndarray]


def tokenize(text: str, tokenizer: str | tiktoken.Encoding = "gpt2") -> np.ndarray:
    """Encodes ``text`` into a flat int32 array of token ids.

    ``<|endoftext|>`` is allowed in the text and maps to its special id, as in
    the seed's dataset.

    Example:
      >>> tokenize("Hello world").tolist()
      [15496, 995]
    """
    if not isinstance(text, str):
        raise InvalidTypeError(f"text must be a str, got {type(text).__name__}.")
    enc = tokenizer_lib.get_encoding(tokenizer)
    return np.asarray(enc.encode(text, allowed_special={"<|endoftext|>"}), dtype=np.int32)


def as_token_ids(
    text_or_ids: str | Sequence[int] | np.ndarray, tokenizer: str | tiktoken.Encoding = "gpt2"
) -> np.ndarray:
    """Returns a flat id array: tokenizes text, validates given ids.

    Text and id sequences become int32. Arrays already stored as ``int32``,
    ``uint16`` or ``uint32`` (e.g. the memory-mapped ``tokens.npy`` of
    ``jaxembed.text.token_files.open_tokens``) come back as they are, never copied;
    batches are cast to int32 when gathered. The id range is checked in
    chunks of ``_VALIDATE_CHUNK`` ids, so checking a memory map reads it once
    (2 bytes per token for uint16) without ever holding a full-size temporary.

    Raises:
      ValueError: ids are not 1-D, or lie outside the tokenizer's vocabulary.
      TypeError: the input is neither text nor integer ids.

    Example:
      >>> as_token_ids([464, 4935]).dtype
      dtype('int32')
      >>> ids = np.array([464, 4935], dtype=np.uint16)
      >>> as_token_ids(ids) is ids
      True
    """
    if isinstance(text_or_ids, str):
        return tokenize(text_or_ids, tokenizer)
    ids = np.asarray(text_or_ids)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        raise InvalidTypeError(f"text_or_ids must be a str or integer token ids, got dtype {ids.dtype}.")
    if ids.ndim != 1:
        raise InvalidArgumentError(f"text_or_ids must be a flat (1-D) id array, got shape {ids.shape}.")
    n_vocab = tokenizer_lib.get_encoding(tokenizer).n_vocab
    signed = np.issubdtype(ids.dtype, np.signedinteger)
    for lo in range(0, len(ids), _VALIDATE_CHUNK):
        chunk = ids[lo : lo + _VALIDATE_CHUNK]
        if chunk.max() < n_vocab and not (signed and chunk.min() < 0):
            continue
        bad = lo + np.flatnonzero((chunk < 0) | (chunk >= n_vocab))
        total = sum(
            int(np.count_nonzero((c < 0) | (c >= n_vocab)))
            for c in (ids[i : i + _VALIDATE_CHUNK] for i in range(lo, len(ids), _VALIDATE_CHUNK))
        )
        raise InvalidArgumentError(
            f"text_or_ids[{bad[0]}]={ids[bad[0]]} is outside tokenizer={tokenizer!r}'s vocabulary; "
            f"ids must lie in [0, {n_vocab}) ({total} ids out of range)."
        )
    return _storage_ids(ids)


#: Ids checked per step by ``as_token_ids`` (bounds its temporaries).
_VALIDATE_CHUNK = 1 << 22
#: Id dtypes kept as they are (no copy); others are converted to int32.
STORAGE_DTYPES = (np.dtype(np.int32), np.dtype(np.uint16), np.dtype(np.uint32))


def _storage_ids(ids: np.ndarray) -> np.ndarray:
    if ids.dtype in STORAGE_DTYPES and ids.flags.c_contiguous:
        return ids
    return np.ascontiguousarray(ids, dtype=np.int32)


def num_windows(num_tokens: int, max_length: int, stride: int) -> int:
    """Number of windows ``range(0, num_tokens - max_length, stride)`` yields.

    Example:
      >>> num_windows(10, max_length=4, stride=4)  # starts 0 and 4
      2
    """
    return len(range(0, num_tokens - max_length, stride))


class StridedWindows:
    """Random-access windows over one flat token array (no per-window copies).

    ``windows[i]`` is ``(ids[s:s+L], ids[s+1:s+L+1])`` with ``s = i * stride``;
    ``windows.gather(indices)`` returns a whole batch in one numpy gather.
    ``ids`` stored as int32, uint16 or uint32 (e.g. a memory-mapped
    ``tokens.npy``) are used in place: windows are gathered in that dtype and
    cast to int32 per batch, so ``np.shares_memory(windows.ids, ids)``.
    Pickling a memory-mapped ``ids`` (for Grain worker processes) sends the
    file name and offset, not the tokens; the worker maps the file again.

    Example:
      >>> w = StridedWindows(np.arange(10, dtype=np.int32), max_length=4, stride=4)
      >>> len(w), w[1][0].tolist(), w[1][1].tolist()
      (2, [4, 5, 6, 7], [5, 6, 7, 8])
    """

    def __init__(self, ids: np.ndarray, max_length: int, stride: int):
        self.max_length = check_positive_int(max_length, "max_length")
        self.stride = check_positive_int(stride, "stride")
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise InvalidArgumentError(f"ids must be 1-D, got shape {ids.shape}.")
        self.ids = _storage_ids(ids)
        self._num_windows = num_windows(len(self.ids), self.max_length, self.stride)
        if self._num_windows == 0:
            raise InvalidArgumentError(
                f"the text has {len(self.ids)} tokens, too few for one window of "
                f"max_length={self.max_length}: it needs at least {self.max_length + 1} "
                "tokens (inputs plus the shifted target)."
            )
        # A read-only (L+1)-wide view of every start position; fancy indexing it
        # copies just the requested windows in one vectorised operation.
        self._spans = np.lib.stride_tricks.sliding_window_view(self.ids, self.max_length + 1)

    def __len__(self) -> int:
        return self._num_windows

    def __getitem__(self, index: int) -> Batch:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window index {index} is out of range for {len(self)} windows.")
        span = self._spans[(index % len(self)) * self.stride]
        return span[:-1].astype(np.int32), span[1:].astype(np.int32)

    def spans(self, window_indices: np.ndarray) -> np.ndarray:
        """``spans_NxL1``: each window's ``L + 1`` tokens (inputs plus the last target).

        In the dtype ``ids`` is stored in (int32, uint16 or uint32): a uint16
        chunk is half the bytes to gather and to send to Grain workers;
        ``split_spans`` casts to int32.
        """
        return self._spans[np.asarray(window_indices) * self.stride]

    def gather(self, window_indices: np.ndarray) -> Batch:
        """Returns ``(inputs_BxL, targets_BxL)`` int32 for the given windows."""
        return split_spans(self.spans(window_indices))

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_spans"]  # a view; rebuilt from ids
        mapped = _memmap_source(self.ids)
        if mapped is not None:
            state["ids"] = mapped
        return state

    def __setstate__(self, state):
        if isinstance(state["ids"], _MappedIds):
            state["ids"] = state["ids"].open()
        self.__dict__.update(state)
        self._spans = np.lib.stride_tricks.sliding_window_view(self.ids, self.max_length + 1)


@dataclasses.dataclass(frozen=True)
class _MappedIds:
    """Where a memory-mapped id array lives: what a worker needs to map it again."""

    filename: str
    offset: int
    dtype: str
    length: int

    def open(self) -> np.memmap:
        return np.memmap(self.filename, dtype=np.dtype(self.dtype), mode="r", offset=self.offset, shape=(self.length,))


def _memmap_source(ids: np.ndarray) -> _MappedIds | None:
    # The root memmap (the one whose base is the mmap itself) has its data at
    # file offset root.offset; slices of it copy that offset, so they can't be trusted.
    root = ids
    while not (isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap)):
        root = getattr(root, "base", None)
        if root is None:
            return None
    if root.filename is None or root.mode not in ("r", "c"):
        return None  # writable maps may hold unflushed changes: pickle the data instead
    delta = ids.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return _MappedIds(str(root.filename), int(root.offset) + delta, ids.dtype.str, len(ids))


def split_spans(spans_BxL1: np.ndarray) -> Batch:
    """``(inputs_BxL, targets_BxL)``, int32, from windows of ``L + 1`` tokens (any integer dtype)."""
    return (
        np.ascontiguousarray(spans_BxL1[:, :-1], dtype=np.int32),
        np.ascontiguousarray(spans_BxL1[:, 1:], dtype=np.int32),
    )


class WindowBatches:
    """Grain random-access source whose element ``k`` is the ``k``-th batch.

    Each epoch visits every window exactly once, in a fresh order drawn from
    ``(seed, epoch)`` when ``shuffle`` is set. With ``shard_count`` processes
    the epoch's order is cut into global batches of ``batch_size *
    shard_count`` windows and shard ``shard_index`` takes its own block of
    ``batch_size`` rows from each. Shards are disjoint, cover all windows,
    and stacking their ``k``-th batches in shard order gives exactly the
    ``k``-th batch of one process reading with the global batch size: a
    multi-host run sees the same data as a single-host one.
    The permutation costs 4 bytes per window and is cached per epoch.

    Example:
      >>> w = StridedWindows(np.arange(20, dtype=np.int32), max_length=2, stride=2)
      >>> src = WindowBatches(w, batch_size=3, shuffle=False)
      >>> len(src), src[0][0].tolist()
      (3, [[0, 1], [2, 3], [4, 5]])
    """

    def __init__(
        self,
        windows: StridedWindows,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        num_epochs: int | None = 1,
        shard_index: int = 0,
        shard_count: int = 1,
    ):
        self.windows = windows
        self.batch_size = check_positive_int(batch_size, "batch_size")
        if num_epochs is not None:
            check_positive_int(num_epochs, "num_epochs")
        shard_count = check_positive_int(shard_count, "shard_count")
        if (
            isinstance(shard_index, bool)
            or not isinstance(shard_index, (int, np.integer))
            or not 0 <= shard_index < shard_count
        ):
            raise InvalidArgumentError(
                f"shard_index={shard_index!r} is not allowed; it must be an integer in [0, {shard_count})."
            )
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.num_epochs, self.shard_index, self.shard_count = num_epochs, int(shard_index), shard_count
        self.global_batch_size = self.batch_size * shard_count
        full, rest = divmod(len(windows), self.global_batch_size)
        # A final partial global batch leaves this shard some rows only if it reaches them.
        has_partial = not self.drop_last and rest > self.shard_index * self.batch_size
        self.batches_per_epoch = full + int(has_partial)
        if self.batches_per_epoch == 0:
            what = f"batch_size={batch_size}" + (f" x shard_count={shard_count}" if shard_count > 1 else "")
            raise InvalidArgumentError(
                f"{what} is larger than the {len(windows)} windows, so no batch is left for shard "
                f"{self.shard_index}; use a smaller batch_size, stride or max_length"
                + (", or drop_last=False." if self.drop_last else ".")
            )
        self._order_epoch, self._order = -1, np.empty(0, np.int32)

    def __len__(self) -> int:
        if self.num_epochs is None:
            return sys.maxsize
        return self.batches_per_epoch * self.num_epochs

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All window indices in the order epoch ``epoch`` visits them."""
        if epoch != self._order_epoch:
            n = len(self.windows)
            dtype = np.int32 if n < 2**31 else np.int64
            if self.shuffle:
                order = np.random.default_rng((self.seed, epoch)).permutation(n).astype(dtype)
            else:
                order = np.arange(n, dtype=dtype)
            self._order_epoch, self._order = epoch, order
        return self._order

    def __getitem__(self, index: int) -> Batch:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} is out of range for {len(self)} batches.")
        epoch, k = divmod(index, self.batches_per_epoch)
        return split_spans(self.spans(epoch, k, k + 1))

    def spans(self, epoch: int, first: int, stop: int) -> np.ndarray:
        """This shard's windows of batches ``first .. stop - 1`` of ``epoch``, stacked.

        Returns ``spans_NxL1`` (see ``StridedWindows.spans``): ``batch_size``
        rows per batch, fewer for a final partial batch.
        """
        starts = np.arange(first, stop) * self.global_batch_size + self.shard_index * self.batch_size
        rows = (starts[:, None] + np.arange(self.batch_size)).ravel()
        rows = rows[rows < len(self.windows)]
        return self.windows.spans(self.epoch_order(epoch)[rows])

    def __getstate__(self):
        # Worker processes rebuild the cached order themselves; don't ship it.
        state = self.__dict__.copy()
        state["_order_epoch"], state["_order"] = -1, np.empty(0, np.int32)
        return state
