"""Token ids to batches: strided windows, the Grain loader, train/validation splits, ``get_datasets``.

The second stage of the data flow (text -> data -> nn -> train -> report). One module per concept:
``windows`` (ids and strided windows, random access), ``loader`` (``create_dataloader`` on Grain),
``splits`` (a corpus -> train/validation ``Splits`` and its fingerprint) and ``pipeline``
(``get_datasets``: splits -> Grain -> global batches on a device mesh).

Example:
  >>> from jaxembed import data
  >>> ids = list(range(10))
  >>> inputs_BxL, targets_BxL = next(iter(data.create_dataloader(ids, batch_size=2, max_length=4, stride=4, shuffle=False)))
  >>> inputs_BxL.tolist(), targets_BxL.tolist()
  ([[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3, 4], [5, 6, 7, 8]])
"""

from jaxembed.data import loader, pipeline, splits, windows
from jaxembed.data.loader import (
    Unbatch,
    WindowBatchChunks,
    create_dataloader,
    make_dataset,
    window_batches,
)
from jaxembed.data.pipeline import get_datasets
from jaxembed.data.splits import Splits, load_splits, split_ids
from jaxembed.data.windows import (
    STORAGE_DTYPES,
    Batch,
    StridedWindows,
    WindowBatches,
    as_token_ids,
    num_windows,
    split_spans,
    tokenize,
)

__all__ = [
    "STORAGE_DTYPES",
    "Batch",
    "Splits",
    "StridedWindows",
    "Unbatch",
    "WindowBatchChunks",
    "WindowBatches",
    "as_token_ids",
    "create_dataloader",
    "get_datasets",
    "load_splits",
    "loader",
    "make_dataset",
    "num_windows",
    "pipeline",
    "split_ids",
    "split_spans",
    "splits",
    "tokenize",
    "window_batches",
    "windows",
]
