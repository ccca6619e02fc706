"""JAX's persistent compilation cache for jaxembed runs: a re-run loads its programs instead of compiling them.

A ``jaxembed train`` compiles a train step, an eval step and a few small
helpers; on a 2-core machine that is several seconds of every run, repeated by
every re-run of the same config (a learner re-running a notebook cell, a
preempted job resuming). JAX can keep compiled executables on disk, keyed by
the program, its shardings, the devices and the JAX/XLA versions, so a changed
config or a new JAX compiles afresh and never loads a stale program.

Where: ``$JAXEMBED_COMPILATION_CACHE`` if set, else ``xla/`` under jaxembed's
cache directory (``$JAXEMBED_CACHE``, else the platform user cache, e.g.
``~/.cache/jaxembed/xla``). ``JAXEMBED_COMPILATION_CACHE=off`` turns it off;
a cache directory the user already gave JAX (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)``) is used as it is.

Example:
  >>> from jaxembed.train import enable_compilation_cache
  >>> cache = enable_compilation_cache()  # before the first jax.jit call of the run
"""

from __future__ import annotations

import os
import pathlib

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from jaxembed.text.corpus import cache_dir

__all__ = ["MAX_BYTES", "OFF_VALUES", "compilation_cache_dir", "enable_compilation_cache"]

#: Values of ``$JAXEMBED_COMPILATION_CACHE`` that turn the cache off.
OFF_VALUES = frozenset({"0", "off", "false", "no", "none"})
#: The cache's size bound in bytes; JAX evicts the least recently used programs above it.
MAX_BYTES = 1 << 30


def compilation_cache_dir() -> pathlib.Path | None:
    """Where jaxembed keeps compiled programs, or ``None`` when ``$JAXEMBED_COMPILATION_CACHE`` turns it off.

    Example:
      >>> saved = os.environ.pop("JAXEMBED_COMPILATION_CACHE", None)
      >>> compilation_cache_dir() == cache_dir() / "xla"
      True
      >>> os.environ["JAXEMBED_COMPILATION_CACHE"] = "off"
      >>> print(compilation_cache_dir())
      None
      >>> os.environ["JAXEMBED_COMPILATION_CACHE"] = "/scratch/xla"
      >>> compilation_cache_dir()
      PosixPath('/scratch/xla')
      >>> if saved is None: del os.environ["JAXEMBED_COMPILATION_CACHE"]
      ... else: os.environ["JAXEMBED_COMPILATION_CACHE"] = saved
    """
    value = os.environ.get("JAXEMBED_COMPILATION_CACHE", "").strip()
    if value.lower() in OFF_VALUES and value:
        return None
    return pathlib.Path(value).expanduser() if value else cache_dir() / "xla"


def enable_compilation_cache() -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache in ``compilation_cache_dir()``; returns the directory in use.

    Call it before the programs to cache are compiled (``jaxembed train`` does). Every
    program is cached, however quickly it compiled (JAX's default skips those
    under a second, which on a CPU is most of a small run's programs). The
    cache is bounded at ``MAX_BYTES`` (1 GiB), which also makes JAX take a file
    lock around each read and write: two processes of a run (or two runs)
    never read an entry another is still writing. A directory already
    configured for JAX is kept and returned.

    Returns:
      The cache directory, or ``None`` when the cache is off.

    Example:
      >>> cache = enable_compilation_cache()
      >>> cache is None or cache == pathlib.Path(jax.config.jax_compilation_cache_dir)
      True
    """
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return pathlib.Path(configured)
    path = compilation_cache_dir()
    if path is None:
        return None
    jax_compilation_cache.reset_cache()  # an earlier compilation set JAX's cache up without a directory
    jax_compilation_cache.set_cache_dir(str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_compilation_cache_max_size == -1:  # unbounded, JAX's default: no locking either
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
