"""A run's working directory: ``Workdir`` owns every file name a run keeps and the order it opens them in.

``W/config.json`` (the config the run was started with), ``W/corpus.json`` (the corpus
fingerprint), ``W/metrics.jsonl`` (one JSON row per logged step), ``W/token_counts.npy``
(training token counts, for the report), with ``model.active_vocab`` ``W/active_ids.npy``,
``W/config_changes.jsonl`` (settings changed on resume), ``W/train.log`` (orbax/absl logs),
the lock ``W/.lock`` and the checkpoints in ``W/checkpoints`` (``jaxembed.train.checkpoint``).

Example:
  >>> import tempfile
  >>> w = check_workdir(tempfile.mkdtemp())
  >>> log = MetricsLog(w / "metrics.jsonl")
  >>> log.append({"step": 1, "train_loss": 5.0})
  >>> (w / "metrics.jsonl").read_text()
  '{"step": 1, "train_loss": 5.0}\\n'
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import socket

import jax
import numpy as np

from jaxembed.config import upgrade_run_config
from jaxembed.data.splits import fingerprint_mismatch
from jaxembed.errors import JaxembedError
from jaxembed.fileio import atomic_open, write_text_atomic

CONFIG_FILE = "config.json"
CORPUS_FILE = "corpus.json"
METRICS_FILE = "metrics.jsonl"
TOKEN_COUNTS_FILE = "token_counts.npy"
ACTIVE_IDS_FILE = "active_ids.npy"
CHANGES_FILE = "config_changes.jsonl"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
#: In a step folder's new name once set aside as unreadable: ``STEP.unreadable-TIME`` (``Checkpointer``).
SET_ASIDE_MARK = ".unreadable-"


class WorkdirError(JaxembedError, RuntimeError):
    """The workdir cannot be used (not writable, in use, or holding another run)."""


class Workdir:
    """A run's folder: the one owner of its file names and of the order in which a run opens it.

    ``open_for_run`` is the sequence every training run follows: check the folder can be
    written (creating nothing) -> lock it if it exists (a busy workdir is refused at once) ->
    compare the requested config with the run's (``RESUME_RULES``) -> (the caller loads the
    data) -> ``create``: compare the corpus fingerprint, create the folder, lock it, arrange
    that a run failing before it writes anything leaves no debris, check every process sees
    the same folder, and route library logs to ``train.log``.

    Example:
      >>> import tempfile
      >>> w = Workdir(tempfile.mkdtemp())
      >>> w.config_file.name, w.checkpoints_dir.name, w.has_checkpoints()
      ('config.json', 'checkpoints', False)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path).absolute()
        self.created = False  # by this run (create()), so that an interrupted start-up may remove it

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    config_file = property(lambda self: self.path / CONFIG_FILE)
    corpus_file = property(lambda self: self.path / CORPUS_FILE)
    metrics_file = property(lambda self: self.path / METRICS_FILE)
    token_counts_file = property(lambda self: self.path / TOKEN_COUNTS_FILE)
    active_ids_file = property(lambda self: self.path / ACTIVE_IDS_FILE)
    changes_file = property(lambda self: self.path / CHANGES_FILE)
    log_file = property(lambda self: self.path / LOG_FILE)
    checkpoints_dir = property(lambda self: self.path / CHECKPOINTS_DIR)

    def has_checkpoints(self) -> bool:
        """True if ``checkpoints/`` holds at least one step folder."""
        folder = self.checkpoints_dir
        return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())

    def open_for_run(self, stack: contextlib.ExitStack, requested_config: dict) -> dict[str, tuple[object, object]]:
        """Checks, locks (if the folder exists) and compares settings; returns the changes to announce.

        Raises:
          WorkdirError: the folder cannot be written, is in use, holds a run with other settings, or
            holds only checkpoints set aside as unreadable (a new run would replace its metrics).
        """
        check_workdir(self.path)
        self.resuming = self.has_checkpoints()
        set_aside = (
            sorted(p.name for p in self.checkpoints_dir.glob(f"*{SET_ASIDE_MARK}*")) if not self.resuming else []
        )
        if set_aside:
            raise WorkdirError(
                f"workdir {self.path}: every checkpoint of its run was set aside as unreadable "
                f"({', '.join(set_aside)} in checkpoints/), so there is nothing to resume, and a new run here "
                "would replace its metrics and report. Start a new run with another --workdir, or delete "
                "checkpoints/ to start over here. Nothing was changed."
            )
        self._locked = self.path.is_dir() and self._lock(stack)
        return check_resume(self.path, requested_config) if self.resuming else {}

    def create(self, stack: contextlib.ExitStack, fingerprint: dict | None) -> None:
        """After the data is loaded: checks the corpus, creates, locks, and routes library logs here.

        Raises:
          WorkdirError: another corpus, the folder cannot be created, or it is not shared by every process.
        """
        if getattr(self, "resuming", False) and fingerprint is not None:
            self.check_corpus(fingerprint)
        new = create_workdir(self.path)
        self.created = new
        if not getattr(self, "_locked", False):
            self._lock(stack)
        if new:  # only once locked: a run refused by the lock must not remove the holder's new workdir
            stack.callback(remove_if_empty, self.path)  # a run that fails before writing leaves no debris
        check_shared(self.path)
        stack.enter_context(library_log(self.log_file))

    def _lock(self, stack: contextlib.ExitStack) -> bool:
        if jax.process_index() != 0:  # one lock per run: the other processes write under process 0's
            return True
        stack.enter_context(WorkdirLock(self.path))
        return True

    def check_corpus(self, fingerprint: dict) -> None:
        """Refuses to resume a run on another corpus than the one it was trained on.

        Raises:
          WorkdirError: ``corpus.json`` describes a different corpus (both are named).
        """
        if not self.corpus_file.is_file():
            return
        mismatch = fingerprint_mismatch(json.loads(self.corpus_file.read_text()), fingerprint)
        if mismatch:
            raise WorkdirError(f"workdir {self.path}: {mismatch} Nothing in it was changed.")

    def write_run_files(
        self,
        config_json: str,
        *,
        fingerprint: dict | None,
        token_counts: np.ndarray,
        active_ids: np.ndarray | None,
        changes: dict[str, tuple[object, object]],
        step: int,
    ) -> None:
        """Writes (atomically) what a run keeps besides metrics and checkpoints; process 0 only."""
        if changes:
            record_changes(self.path, step, changes)
        write_text_atomic(self.config_file, config_json)
        if fingerprint is not None:
            write_text_atomic(self.corpus_file, json.dumps(fingerprint, indent=2))
        with atomic_open(self.token_counts_file, "wb") as f:
            np.save(f, token_counts)
        if active_ids is not None:
            with atomic_open(self.active_ids_file, "wb") as f:
                np.save(f, active_ids)

    def read_config(self) -> dict:
        """The run's ``config.json`` as a dict.

        Raises:
          WorkdirError: the folder holds no jaxembed run.
        """
        if not self.path.exists():
            raise WorkdirError(f"{self.path} does not exist: give the --workdir of a run you trained.")
        if not self.config_file.is_file():
            raise WorkdirError(f"{self.path} is not a jaxembed run: {self.config_file} is missing.")
        return upgrade_run_config(json.loads(self.config_file.read_text()))


def check_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """Checks that ``workdir`` can be created and written, without creating anything.

    A run refused for a bad setting must leave no empty workdir behind, so
    the folder is made only once everything has been validated
    (``create_workdir``).

    Returns:
      The absolute path.

    Raises:
      WorkdirError: it is a file, lies under a file, or its nearest existing
        folder cannot be written; the message names the path.

    Example:
      >>> import pathlib, tempfile
      >>> w = check_workdir(pathlib.Path(tempfile.mkdtemp()) / "new" / "run")
      >>> w.is_absolute(), w.exists()
      (True, False)
    """
    path = pathlib.Path(workdir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = "it is a file" if existing == path else f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise WorkdirError(f"workdir {path} cannot be written ({problem}); choose another --workdir.")
    return path


def create_workdir(path: pathlib.Path) -> bool:
    """Creates the workdir (and its parents); returns whether it was new.

    Raises:
      WorkdirError: it cannot be created or written.
    """
    new = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"workdir {path} cannot be written ({e.strerror or e}); choose another --workdir.") from None
    return new


def remove_if_empty(path: pathlib.Path) -> None:
    """Removes a workdir this run created if it holds nothing but its lock and log files (no debris)."""
    try:
        log_file = path / LOG_FILE
        names = {p.name for p in path.iterdir()}
        if names <= {LOCK_FILE, LOG_FILE} and (not log_file.exists() or log_file.stat().st_size == 0):
            (path / LOCK_FILE).unlink(missing_ok=True)
            (path / LOG_FILE).unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass


def check_shared(path: pathlib.Path) -> None:
    """Multi-process runs: proves every process sees the same workdir (a shared folder).

    Process 0 writes a marker; after a barrier every process looks for it and
    all of them agree on the outcome, so either all go on or all stop with
    the same message (never one process dying inside orbax and another hanging).

    Raises:
      WorkdirError: some process does not see process 0's marker.
    """
    if jax.process_count() == 1:
        return
    import numpy as np
    from jax.experimental import multihost_utils

    token = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.SeedSequence().entropy % 2**31)))
    marker = path / f".shared-check-{token}"
    if jax.process_index() == 0:
        marker.write_text(socket.gethostname())
    multihost_utils.sync_global_devices("jaxembed: shared workdir marker written")
    seen = multihost_utils.process_allgather(np.array(marker.exists(), np.int32))
    multihost_utils.sync_global_devices("jaxembed: shared workdir marker checked")
    if jax.process_index() == 0:
        marker.unlink(missing_ok=True)
    blind = [i for i, ok in enumerate(np.ravel(seen)) if not ok]
    if blind:
        raise WorkdirError(
            f"workdir {path} is not the same folder on every process: process(es) {blind} cannot see the "
            "file process 0 wrote there. --workdir must be the same shared directory on every host."
        )


class _BestEffortFileHandler(logging.FileHandler):
    """A log file that drops a record it cannot write instead of printing a traceback.

    The usual reason is a full disk, which the run reports itself in one line;
    logging's default (``--- Logging error ---`` and a traceback on stderr)
    would bury that line.
    """

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextlib.contextmanager
def library_log(path: pathlib.Path | None):
    """Sends the logs of orbax, TensorStore and absl to ``path`` instead of the terminal.

    A failing checkpoint write makes orbax log hundreds of lines; the user
    needs the one line jaxembed raises, and the details stay in the file.
    """
    if path is None or jax.process_index() != 0:
        yield
        return
    handler = _BestEffortFileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "tensorstore", "asyncio")]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, (propagate, level) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate, lg.level = propagate, level
        handler.close()


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
        self.sinks: list = []  # more writers of each row (e.g. TensorBoard's), called after the file
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
        """Adds ``row``, appends it to the file (flushed and fsync'd), and hands it to ``sinks``."""
        self.rows.append(row)
        if self.path is not None and jax.process_index() == 0:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        for sink in self.sinks:
            sink(row)


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
    path = pathlib.Path(workdir) / METRICS_FILE
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class WorkdirLock:
    """An exclusive OS lock on ``W/.lock`` so two runs never write one workdir.

    ``fcntl.flock`` locks belong to the open file, so the OS releases them
    when the process ends, however it ends (``kill -9`` included): a lock
    never goes stale and never needs cleaning by hand. The file keeps the
    holder's pid and host, for the refusal message.

    Raises:
      WorkdirError: another process holds the lock (the message names its
        pid and host).

    Example:
      >>> import tempfile
      >>> w = check_workdir(tempfile.mkdtemp())
      >>> with WorkdirLock(w):
      ...     WorkdirLock(w).acquire()
      Traceback (most recent call last):
      ...
      jaxembed.train.workdir.WorkdirError: workdir ... is in use by pid ... on host ...
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = pathlib.Path(workdir)
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        path = self.workdir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirError(
                f"workdir {self.workdir} is in use by {holder}; wait for that run to finish (or stop it), "
                "or choose another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


#: How each config field may differ when a run resumes (first match wins; ``*`` ends a prefix).
#: ``refuse``: it changes shapes, data or what a number means, so resuming would silently mix two runs.
#: ``notice``: allowed, said out loud and recorded in ``W/config_changes.jsonl``.
#: Everything else is free (where files go, how often to log, devices, the report).
RESUME_RULES: tuple[tuple[str, str], ...] = (
    ("model.loss_tile_tokens", "free"),  # the same loss (to ~1e-6), computed in other pieces
    # Where the tables started: read on a fresh start only, a resume continues from the checkpoint.
    # Allowed, and recorded, so the run's history still says what it started from.
    ("model.init_from", "notice"),
    ("seed", "refuse"),
    ("model.*", "refuse"),
    ("data.tokenizer", "refuse"),
    ("data.max_length", "refuse"),
    ("data.stride", "refuse"),
    ("data.batch_size", "refuse"),
    ("data.val_fraction", "refuse"),
    ("train.eval_batches", "refuse"),
    ("train.steps", "notice"),
    ("optim.*", "notice"),
    ("train.eval_every", "notice"),
    ("train.checkpoint_every", "notice"),
)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def resume_rule(field: str) -> str:
    """``"refuse"``, ``"notice"`` or ``"free"``: how ``field`` may change on resume (``RESUME_RULES``).

    Example:
      >>> resume_rule("model.features"), resume_rule("train.steps"), resume_rule("train.log_every")
      ('refuse', 'notice', 'free')
    """
    for pattern, rule in RESUME_RULES:
        if field == pattern or (pattern.endswith("*") and field.startswith(pattern[:-1])):
            return rule
    return "free"


def config_changes(stored: dict, requested: dict) -> dict[str, tuple[object, object]]:
    """Every field whose value differs: ``{field: (stored, requested)}`` (missing fields count as None).

    Example:
      >>> config_changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}})
      {'a.c': (2, 3)}
    """
    old, new = _flatten(json.loads(json.dumps(stored))), _flatten(json.loads(json.dumps(requested)))
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def check_resume(workdir: pathlib.Path, requested: dict) -> dict[str, tuple[object, object]]:
    """Compares the requested config with the run's ``config.json``, before anything is restored.

    Returns:
      The changes allowed with a notice (``{field: (old, new)}``); free
      changes are not returned.

    Raises:
      WorkdirError: a field that must match differs; the message lists every
        such field with both values, and says what to do. Nothing is touched.
    """
    path = workdir / CONFIG_FILE
    if not path.is_file():
        return {}
    changes = config_changes(upgrade_run_config(json.loads(path.read_text())), requested)
    refused = {k: v for k, v in changes.items() if resume_rule(k) == "refuse"}
    if refused:
        listed = "; ".join(f"{k}: {old!r} in the run, {new!r} now" for k, (old, new) in refused.items())
        raise WorkdirError(
            f"workdir {workdir} holds a run with other settings ({listed}). Resuming would mix two different "
            "runs, so nothing was changed: rerun with the run's settings (see its config.json), "
            "or choose a new --workdir."
        )
    return {k: v for k, v in changes.items() if resume_rule(k) == "notice"}


def record_changes(workdir: pathlib.Path, step: int, changes: dict[str, tuple[object, object]]) -> None:
    """Appends one row ``{"step", "changes"}`` to ``W/config_changes.jsonl`` (the run's history)."""
    row = {"step": step, "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}
    with (workdir / CHANGES_FILE).open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
