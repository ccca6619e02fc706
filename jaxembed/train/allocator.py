"""Host memory for XLA:CPU's per-step buffers: ``tune_cpu_allocator()``, called once at process start.

Each run of a compiled program on the CPU backend allocates its temporaries afresh with
``posix_memalign`` and frees them at the end. glibc's malloc serves any allocation above 32 MiB
(the ceiling of its mmap threshold, ``DEFAULT_MMAP_THRESHOLD_MAX``) with a fresh ``mmap`` and
returns it with ``munmap``; so do XLA's worker threads for anything larger than a thread arena's
64 MiB heap, whatever ``M_MMAP_MAX`` says. The kernel then page-faults every touched page in again
on every step: the seed's 256-wide train step (103 MB of temporaries) spent 50 of its 70 ms in the
kernel, and `jaxembed plan`-sized steps more (benchmarks/README.md, "Kernel time").

``tune_cpu_allocator`` asks glibc (``mallopt``) to keep such memory in the process: one arena for
every thread (``M_ARENA_MAX=1``: the main heap, which grows with ``brk``), no ``mmap`` for single
allocations (``M_MMAP_MAX=0``), and freed memory kept up to ``TRIM_THRESHOLD_BYTES`` before it is
handed back (``M_TRIM_THRESHOLD``). A step then reuses the same pages: no faults, the same numbers.
The arena setting only reaches threads that have not allocated yet, so call it before JAX starts
its CPU client (before the first ``jax.devices()`` or computation): ``jaxembed train`` does, first
thing. It changes the whole process's allocator, which is why the library never calls it on its own.

Example (in a new process: the settings are the whole process's):
  >>> import subprocess, sys
  >>> code = "from jaxembed.train import tune_cpu_allocator; print(tune_cpu_allocator())"
  >>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout  # glibc
  'True\\n'
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

__all__ = ["TRIM_THRESHOLD_BYTES", "tune_cpu_allocator"]

#: Freed heap memory glibc keeps for reuse before returning it to the system: more than one step's
#: temporaries of the configs meant for CPUs (tiny, default: ``jaxembed plan``), so that steps
#: allocate nothing new. (The largest value ``mallopt`` takes is a C int.)
TRIM_THRESHOLD_BYTES = 1 << 30

# glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
#: glibc's own environment variables for the same settings: a user who set one has chosen.
_GLIBC_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


@functools.cache
def tune_cpu_allocator() -> bool:
    """Keeps XLA:CPU's per-step buffers in the process heap instead of fresh ``mmap`` s (see the module).

    Does nothing where malloc is not glibc's, and where the environment already sets one of glibc's
    malloc variables (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_MMAP_THRESHOLD_``) or preloads another allocator (``LD_PRELOAD``). Idempotent.

    Returns:
      True if glibc accepted the settings.

    Example (first thing in a program, before JAX computes anything)::

      import jaxembed.train
      jaxembed.train.tune_cpu_allocator()
    """
    if any(name in os.environ for name in _GLIBC_VARIABLES) or os.environ.get("LD_PRELOAD"):
        log.debug("tune_cpu_allocator: the environment configures malloc already; left as it is.")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return all(mallopt(option, value) == 1 for option, value in settings)
