"""Grain, imported for the whole package without a notice that is not about jaxembed.

With jaxlib older than 0.11 (Colab's runtime ships 0.7.2), importing grain logs
``Grain multiprocess worker profiling requires jaxlib extension version 448 or
later ...`` through absl, in red in a notebook and on every ``jaxembed train``.
jaxembed never profiles Grain's worker processes, so that one record is
dropped; every other absl record passes. Modules import ``grain`` from here so
the filter is in place before grain's first import.

Example:
  >>> from jaxembed.data._grain import grain
  >>> list(grain.MapDataset.range(3))
  [0, 1, 2]
"""

from __future__ import annotations

import logging

from absl import logging as absl_logging

_NOTICE = "Grain multiprocess worker profiling requires jaxlib"


def _not_worker_profiling_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_NOTICE)


absl_logging.get_absl_logger().addFilter(_not_worker_profiling_notice)

import grain  # noqa: E402  (after the filter: grain logs the notice at import)

__all__ = ["grain"]
