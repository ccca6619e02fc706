"""TensorBoard for a run: scalars, config, report images, the projector and profiler traces.

``SummaryLog`` writes the metrics rows of ``jaxembed.train.loop`` as TensorBoard
scalars (through tensorboardX, which needs no TensorFlow), the run's config
as text and the report's PNGs as images; ``write_projector`` writes the
files TensorBoard's projector tab reads, so ``tensorboard --logdir runs/``
shows the token table in 3-D; ``profile`` wraps a range of steps in a
``jax.profiler`` trace for TensorBoard's profile tab (``pip install xprof``).

The event files, the projector files and the traces all live in one folder
(the run's workdir), which TensorBoard lists as one run.

Example:
  >>> import tempfile
  >>> with tempfile.TemporaryDirectory() as d:
  ...     with SummaryLog(d) as tb:
  ...         tb.write_row({"step": 0, "learning_rate": 0.0, "val_loss": 10.8})
  ...         tb.write_row({"step": 10, "train_loss": 9.7, "learning_rate": 0.01})
  ...     sorted(p.name.split(".")[0] for p in pathlib.Path(d).iterdir())
  ['events']
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import pathlib
import re
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxembed.config import parse_profile_steps
from jaxembed.errors import InvalidArgumentError
from jaxembed.fileio import atomic_open, write_text_atomic

log = logging.getLogger(__name__)

PROJECTOR_CONFIG = "projector_config.pbtxt"  # the name TensorBoard's projector plugin looks for
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # PNG colour type -> channels (palette decodes to RGB)
_TAG = re.compile(r"[A-Za-z0-9_.\-]+")


def _summary_writer_class() -> type:
    """``tensorboardX.SummaryWriter``, imported without importing PyTorch.

    tensorboardX's writer tries ``import torch`` only so as to accept torch tensors; jaxembed writes
    numpy. Where torch is installed but not yet imported, that import costs a second or more of every
    run's start-up, so it is made to fail for the duration of tensorboardX's own import (a ``None``
    entry in ``sys.modules``, which Python reads as "not importable"), then put back as it was.
    """
    import sys

    if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class SummaryLog:
    """TensorBoard event files for one run, written by process 0 (a no-op elsewhere).

    On resume, TensorBoard shows one continuous curve: the new event file
    starts with a purge marker at ``resume_step + 1`` (at 0 for a fresh
    run), so readers drop whatever a killed run wrote past the restored
    step. Each writer's file name carries its start time in nanoseconds,
    so files sort in the order they were started, as readers require.

    Args:
      logdir: the run's folder (created if missing); use the workdir, so
        ``tensorboard --logdir`` on its parent lists the run by name.
      resume_step: the step the run resumes from (0: a fresh run).
      flush_secs: seconds between flushes of pending events to disk.

    Raises:
      ValueError: ``resume_step`` is not an integer >= 0.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     tb = SummaryLog(d, resume_step=50)
      ...     tb.first_step
      51
      >>> tb.close()
    """

    def __init__(self, logdir: str | os.PathLike, *, resume_step: int = 0, flush_secs: float = 5.0):
        if isinstance(resume_step, bool) or not isinstance(resume_step, numbers.Integral) or resume_step < 0:
            raise InvalidArgumentError(f"resume_step={resume_step!r} must be an integer >= 0 (0: a fresh run).")
        self.logdir = pathlib.Path(logdir)
        # Rows up to resume_step survive a resume (as in metrics.jsonl); everything later is purged.
        self.first_step = int(resume_step) + 1 if resume_step else 0
        self._writer = None
        if jax.process_index() != 0:
            return
        SummaryWriter = _summary_writer_class()  # noqa: N806 - a class

        self.logdir.mkdir(parents=True, exist_ok=True)
        # tensorboardX names files by the second and opens them with "wb": a restart within the same
        # second would truncate the killed run's file. The zero-padded nanosecond suffix keeps names
        # unique and sorted by start time.
        self._writer = SummaryWriter(
            str(self.logdir),
            purge_step=self.first_step,
            flush_secs=flush_secs,
            filename_suffix=f".{time.time_ns():020d}.{os.getpid()}",
        )

    def __enter__(self) -> SummaryLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_row(self, row: Mapping[str, Any]) -> None:
        """Writes every numeric value of a metrics row as a scalar at ``row["step"]``.

        Keys other than ``step`` become tags (``train_loss``, ``val_loss``,
        ``learning_rate``, ``grad_norm``, ``tokens_per_sec``); non-numeric
        values (and booleans) are skipped. NaN/inf are written as they are.

        Raises:
          ValueError: ``row`` has no integer ``step`` >= 0.
        """
        step = _step(row.get("step"), "row['step']")
        if self._writer is None:
            return
        for tag, value in row.items():
            if tag == "step" or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            self._writer.add_scalar(tag, float(value), step)

    def write_config(self, config_json: str, *, step: int | None = None) -> None:
        """Writes the run's config (JSON text) to TensorBoard's text tab under the tag ``config``.

        It goes at ``step`` (default ``first_step``: 0, or the first step
        after the restored one, so a resumed run shows the config it went on
        with and a repeated resume replaces it rather than adding a copy).
        """
        if self._writer is None:
            return
        from tensorboardX.summary import text

        # The text plugin renders Markdown: a fence keeps the JSON's indentation and quotes as they are.
        fence = "`" * max(3, 1 + max(map(len, re.findall("`+", config_json)), default=0))
        summary = text("config", f"{fence}json\n{config_json.rstrip()}\n{fence}")
        summary.value[0].tag = "config"  # tensorboardX appends "/text_summary"
        self._writer.file_writer.add_summary(summary, self.first_step if step is None else _step(step, "step"))

    def write_images(self, step: int, images: Mapping[str, str | os.PathLike]) -> None:
        """Writes PNG files (such as the report's plots) as images, byte for byte.

        Args:
          step: the step to show them at (the run's last step).
          images: tag -> path of a PNG file, e.g. ``{"report/loss": "W/loss.png"}``.

        Raises:
          ValueError: ``step`` is not an integer >= 0, or a file is not a PNG.
          FileNotFoundError: a file is missing.
        """
        step = _step(step, "step")
        if self._writer is None:
            return
        from tensorboardX.proto.summary_pb2 import Summary

        values = []
        for tag, path in images.items():
            data = pathlib.Path(path).read_bytes()
            if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
                raise InvalidArgumentError(
                    f"images[{tag!r}]={str(path)!r} is not a PNG file; only PNG images are allowed."
                )
            width, height = struct.unpack(">II", data[16:24])
            image = Summary.Image(
                height=height, width=width, colorspace=_PNG_CHANNELS.get(data[25], 4), encoded_image_string=data
            )
            values.append(Summary.Value(tag=tag, image=image))
        self._writer.file_writer.add_summary(Summary(value=values), step)

    def flush(self) -> None:
        """Writes pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file; later writes are dropped."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _step(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidArgumentError(f"{name}={value!r} must be an integer step >= 0.")
    return int(value)


def write_projector(
    logdir: str | os.PathLike,
    table_VxD: np.ndarray,
    token_ids: Sequence[int],
    labels: Sequence[str],
    *,
    tag: str = "token_embeddings",
) -> dict[str, pathlib.Path]:
    r"""Writes the files TensorBoard's projector tab reads for rows ``token_ids`` of a table.

    ``logdir/projector_config.pbtxt`` gets an ``embeddings { tensor_name,
    tensor_path, metadata_path }`` entry for ``tag`` (entries for other tags
    are kept); ``logdir/projector/<tag>/tensor.tsv`` holds the
    ``[len(token_ids), D]`` rows as float32 text (exact to float32), and
    ``metadata.tsv`` a ``label<TAB>id`` header then one line per row. Tabs
    and line breaks inside labels are written as ``\t``, ``\n``, ``\r``.
    TensorBoard lists the projector only for a folder that also holds event
    files (a ``SummaryLog``). Call it on one process only.

    Args:
      logdir: the run's TensorBoard folder.
      table_VxD: the embedding table, ``[V, D]``.
      token_ids: the rows to show (e.g. the most frequent tokens), ``[N]``.
      labels: one label per row (e.g. the decoded tokens), ``[N]``.
      tag: the embedding's name in the projector (letters, digits, ``_.-``).

    Returns:
      ``{"config": ..., "tensor": ..., "metadata": ...}`` paths.

    Raises:
      ValueError: a shape, id, label count or tag is not allowed (the message names it).

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     paths = write_projector(d, np.eye(4, 2), [2, 0], ["two", "zero"], tag="demo")
      ...     print(paths["config"].read_text(), end="")
      ...     paths["metadata"].read_text().splitlines()
      embeddings {
        tensor_name: "demo"
        tensor_path: "projector/demo/tensor.tsv"
        metadata_path: "projector/demo/metadata.tsv"
      }
      ['label\tid', 'two\t2', 'zero\t0']
    """
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidArgumentError(f"tag={tag!r} is not allowed; use letters, digits, '_', '.' and '-' only.")
    table_VxD = np.asarray(table_VxD)
    if table_VxD.ndim != 2 or not np.issubdtype(table_VxD.dtype, np.number):
        raise InvalidArgumentError(
            f"table_VxD must be a numeric [V, D] array, got shape {table_VxD.shape} ({table_VxD.dtype})."
        )
    ids_N = np.asarray(token_ids)
    if ids_N.ndim != 1 or len(ids_N) == 0 or not np.issubdtype(ids_N.dtype, np.integer):
        raise InvalidArgumentError(f"token_ids must be a non-empty 1-D sequence of integers, got shape {ids_N.shape}.")
    bad = (ids_N < 0) | (ids_N >= len(table_VxD))
    if bad.any():
        raise InvalidArgumentError(f"token_ids contains {int(ids_N[bad][0])}; ids must lie in [0, {len(table_VxD)}).")
    if len(labels) != len(ids_N):
        raise InvalidArgumentError(
            f"labels has {len(labels)} entries but token_ids has {len(ids_N)}; give one label per id."
        )
    logdir = pathlib.Path(logdir)
    rel = {name: f"projector/{tag}/{name}.tsv" for name in ("tensor", "metadata")}
    vectors_NxD = table_VxD[ids_N].astype(np.float32)
    with atomic_open(logdir / rel["tensor"]) as f:
        # %.9g round-trips every float32; the plugin parses each line with float() into float32.
        np.savetxt(f, vectors_NxD, fmt="%.9g", delimiter="\t")
    escape = str.maketrans({"\t": r"\t", "\n": r"\n", "\r": r"\r"})
    with atomic_open(logdir / rel["metadata"]) as f:
        # The plugin takes a first line with a tab as the column header.
        f.write("label\tid\n")
        f.writelines(f"{str(label).translate(escape)}\t{int(i)}\n" for label, i in zip(labels, ids_N, strict=True))
    config_path = logdir / PROJECTOR_CONFIG
    entry = f'embeddings {{\n  tensor_name: "{tag}"\n  tensor_path: "{rel["tensor"]}"\n  metadata_path: "{rel["metadata"]}"\n}}\n'
    kept = []
    if config_path.exists():
        kept = [
            block
            for block in re.findall(r"embeddings \{\n.*?\n\}\n", config_path.read_text(), flags=re.DOTALL)
            if f'tensor_name: "{tag}"\n' not in block
        ]
    write_text_atomic(config_path, "".join([*kept, entry]))
    return {"config": config_path, **{name: logdir / path for name, path in rel.items()}}


class StepProfiler:
    """Traces training steps [start, stop) with ``jax.profiler`` into ``logdir/plugins/profile/``.

    Call ``step(step)`` at the top of every step, before running it (as a
    context manager it also marks the step for xprof's step-time view), and
    ``close()`` in a ``finally``. A resumed run whose first step lies inside
    the range traces from there; off (``range is None``) it does nothing.

    Example:
      >>> prof = StepProfiler(None, None)
      >>> with prof.step(1):
      ...     pass
      >>> prof.close()
    """

    def __init__(self, logdir: str | os.PathLike | None, steps: tuple[int, int] | None):
        self.logdir = None if logdir is None else pathlib.Path(logdir)
        self.range = steps
        self._active = self._done = False

    def step(self, step: int, *, wait_for: Any = None) -> contextlib.AbstractContextManager:
        """Starts or stops the trace as ``step`` enters or leaves the range.

        Args:
          step: the step about to run.
          wait_for: arrays (e.g. the train state) to wait for before the trace
            stops, so the last traced step's device work is in the trace.

        Returns:
          A context manager to wrap the step in (it names the step in the trace).
        """
        if self.range is None:
            return contextlib.nullcontext()
        start, stop = self.range
        if self._active and step >= stop:
            self.close(wait_for=wait_for)
        elif not self._active and not self._done and start <= step < stop:
            jax.profiler.start_trace(str(self.logdir))
            self._active = True
        if self._active:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def close(self, *, wait_for: Any = None) -> None:
        """Stops a running trace (the loop ended inside the range, or raised)."""
        if not self._active:
            return
        if wait_for is not None:
            jax.block_until_ready(wait_for)
        jax.profiler.stop_trace()
        self._active, self._done = False, True
        log.info(
            "Profiled steps %d to %d into %s; view with `tensorboard --logdir %s` (Profile tab; pip install xprof).",
            self.range[0],
            self.range[1] - 1,
            self.logdir / "plugins" / "profile",
            self.logdir.parent,
        )


def profile(logdir: str | os.PathLike | None, steps: Any, *, total_steps: int | None = None) -> StepProfiler:
    """A ``StepProfiler`` for ``train.profile_steps`` (see ``parse_profile_steps``); off when it is empty.

    Args:
      logdir: where traces go (the workdir); may be ``None`` only when profiling is off.
      steps: the ``train.profile_steps`` value.
      total_steps: ``train.steps``, to reject a range that would never start.

    Raises:
      ValueError: ``steps`` is malformed, or set while ``logdir`` is ``None``.

    Example:
      >>> profile(None, "").range is None
      True
    """
    parsed = parse_profile_steps(steps, total_steps=total_steps)
    if parsed is not None and logdir is None:
        raise InvalidArgumentError(
            f"train.profile_steps={steps!r} needs a workdir to write the trace into; pass --workdir."
        )
    return StepProfiler(logdir, parsed)
