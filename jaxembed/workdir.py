"""A run's working directory: the files a training run keeps besides checkpoints.

``W/config.json`` (the config the run was started with), ``W/metrics.jsonl``
(one JSON row per logged step), ``W/token_counts.npy`` (training token
counts, for the report) and, with ``model.active_vocab``, ``W/active_ids.npy``.
Checkpoints live in ``W/checkpoints`` (``jaxembed.checkpoint``).

Example:
  >>> import tempfile
  >>> w = check_workdir(tempfile.mkdtemp())
  >>> log = MetricsLog(w / "metrics.jsonl")
  >>> log.append({"step": 1, "train_loss": 5.0})
  >>> (w / "metrics.jsonl").read_text()
  '{"step": 1, "train_loss": 5.0}\\n'
"""

from __future__ import annotations

import json
import os
import pathlib

import jax

from jaxembed.fileio import write_text_atomic


class WorkdirError(RuntimeError):
    """The workdir cannot be used (not writable, or not a jaxembed run)."""


def check_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """Creates ``workdir`` and proves it writable, before any compute.

    Returns:
      The absolute path.

    Raises:
      WorkdirError: it cannot be created or written; the message names the path.

    Example:
      >>> import tempfile
      >>> check_workdir(tempfile.mkdtemp()).is_absolute()
      True
    """
    path = pathlib.Path(workdir).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"workdir {path} cannot be written ({e.strerror or e}); choose another --workdir.") from None
    return path


class MetricsLog:
    """``metrics.jsonl``: one JSON row per logged step, appended as it goes.

    On resume, rows after the restored step (and a torn last line from a
    killed run) are dropped with an atomic rewrite, so the file always reads
    as one uninterrupted run. Only process 0 writes; every process keeps
    ``rows``.

    Args:
      path: the file, or ``None`` to keep rows in memory only.
      resume_step: the step the run resumes from (0: a fresh run, the file is emptied).
    """

    def __init__(self, path: pathlib.Path | None, resume_step: int = 0):
        self.path = path
        self.rows: list[dict] = []
        if path is None or jax.process_index() != 0:
            return
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if resume_step > 0 and row.get("step", 0) <= resume_step:
                    self.rows.append(row)
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.rows), fsync=True)

    def append(self, row: dict) -> None:
        """Adds ``row`` and appends it to the file (flushed and fsync'd)."""
        self.rows.append(row)
        if self.path is not None and jax.process_index() == 0:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The rows of ``W/metrics.jsonl`` (a torn last line is skipped).

    Example:
      >>> import tempfile
      >>> w = check_workdir(tempfile.mkdtemp())
      >>> MetricsLog(w / "metrics.jsonl").append({"step": 0, "val_loss": 10.8})
      >>> read_metrics(w)
      [{'step': 0, 'val_loss': 10.8}]
    """
    rows = []
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
