"""Atomic file writes: a file is either its old self or its complete new self.

Every file jaxembed writes for the user (metrics, reports, plots, projector
files, downloaded corpora, token files) goes through ``atomic_open``: the
bytes go to a hidden temporary file beside the target, which replaces the
target with ``os.replace`` only once it is complete, so a crash, a full disk
or a kill never leaves a half-written file under the real name.

Example:
  >>> import pathlib, tempfile
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
  >>> with atomic_open(path) as f:
  ...     _ = f.write("complete")
  >>> path.read_text()
  'complete'
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid
from collections.abc import Iterator
from typing import IO

from jaxembed.errors import InvalidArgumentError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False) -> Iterator[IO]:
    """Opens a temporary file beside ``path``; moves it into place only on success.

    Args:
      path: the file to (re)place; its parent folder is created if missing.
      mode: ``"w"`` (UTF-8 text, ``\\n`` newlines) or ``"wb"``.
      fsync: flush the bytes to disk before the rename (for files that must
        survive a power cut, such as metrics).

    Raises:
      OSError: the folder cannot be written; the target is left untouched and
        the temporary file is removed.

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
      >>> with atomic_open(path, "wb") as f:
      ...     _ = f.write(b"\\x00\\x01")
      >>> path.read_bytes()
      b'\\x00\\x01'
    """
    if mode not in ("w", "wb"):
        raise InvalidArgumentError(f"mode={mode!r} is not allowed; use 'w' or 'wb'.")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    # Not mkstemp: its 0600 mode would survive os.replace; 0666 lets umask decide.
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _naming(e, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> pathlib.Path:
    """Writes ``text`` to ``path`` atomically (see ``atomic_open``).

    Example:
      >>> import pathlib, tempfile
      >>> write_text_atomic(pathlib.Path(tempfile.mkdtemp()) / "x.txt", "hi").read_text()
      'hi'
    """
    with atomic_open(path, "w", fsync=fsync) as f:
        f.write(text)
    return pathlib.Path(path)


def _naming(error: OSError, path: pathlib.Path) -> OSError:
    """The same error, naming the file the user asked for rather than the hidden temporary one."""
    return type(error)(error.errno, error.strerror or str(error), str(path))
