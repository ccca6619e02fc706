"""Grain for the whole package: imported without a notice that is not about jaxembed, its iterators closed at exit.

With jaxlib older than 0.11 (Colab's runtime ships 0.7.2), importing grain logs
``Grain multiprocess worker profiling requires jaxlib extension version 448 or
later ...`` through absl, in red in a notebook and on every ``jaxembed train``.
jaxembed never profiles Grain's worker processes, so that one record is
dropped; every other absl record passes. Modules import ``grain`` from here so
the filter is in place before grain's first import.

A script that ends without closing an iterator with background work (a prefetch
thread placing batches on devices, worker processes) must still exit cleanly:
``close_at_exit`` registers such iterators, and they are closed when the
interpreter exits, before JAX shuts its backends down.

Example:
  >>> from jaxembed.data._grain import grain
  >>> list(grain.MapDataset.range(3))
  [0, 1, 2]
"""

from __future__ import annotations

import atexit
import functools
import logging
import sys
import weakref

from absl import logging as absl_logging

_NOTICE = "Grain multiprocess worker profiling requires jaxlib"


def _not_worker_profiling_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_NOTICE)


absl_logging.get_absl_logger().addFilter(_not_worker_profiling_notice)

import grain  # noqa: E402  (after the filter: grain logs the notice at import)

__all__ = ["close_at_exit", "grain"]

#: Iterators still referenced whose background work ``_close_all`` stops at exit.
_LIVE: weakref.WeakSet = weakref.WeakSet()


def close_at_exit(iterator: grain.DatasetIterator) -> grain.DatasetIterator:
    """Returns ``iterator``, to be closed when the interpreter exits if it is still open then.

    Example:
      >>> it = close_at_exit(iter(grain.MapDataset.range(3).to_iter_dataset()))
      >>> next(it)
      0
    """
    _register_once()
    _LIVE.add(iterator)
    return iterator


@functools.cache
def _register_once() -> None:
    import jax  # noqa: F401  (JAX registers its exit handler at import; atexit runs ours, registered after, first)

    atexit.register(_close_all)


def _close_all() -> None:
    # A daemon prefetch thread placing batches on the devices while JAX's own exit handler tore the
    # backend down aborted the process (SIGABRT): this runs before JAX's handler (_register_once).
    sys.unraisablehook = _quiet_grain_teardown(sys.unraisablehook)
    failed = []
    for iterator in list(_LIVE):
        try:
            iterator.close()
        except Exception as e:  # close the others first; then Python prints this one's traceback
            failed.append(e)
    if failed:
        raise failed[0]


def _quiet_grain_teardown(previous):
    """Drops the one message Grain's iterators print when the interpreter clears modules after exit.

    DatasetIterator.__del__ calls close() again then, when Grain's own module globals are already
    None ("AttributeError: 'NoneType' object has no attribute ..."): everything was closed above, so
    the traceback would only alarm. Every other unraisable exception goes to ``previous``.
    """

    def hook(unraisable) -> None:
        teardown = sys.is_finalizing() and isinstance(unraisable.exc_value, AttributeError)
        if teardown and getattr(unraisable.object, "__qualname__", "") == "DatasetIterator.__del__":
            return
        previous(unraisable)

    return hook
