"""Text corpora for the embedding demos.

Two named corpora are available, plus any UTF-8 file on disk:

* ``"romeo-juliet"`` -- Project Gutenberg eBook #1513, downloaded once into the
  cache directory (``$JAXEMBED_CACHE``, else the platform user cache dir).
  ``$JAXEMBED_CORPUS=PATH`` substitutes a local copy and skips the network.
* ``"python-docs"`` -- the docstrings of the running interpreter's standard
  library, extracted with :mod:`ast`; needs no network at all.

>>> from jaxembed.text.corpus import CORPORA
>>> CORPORA
('romeo-juliet', 'python-docs')
"""

from __future__ import annotations

import ast
import glob as glob_lib
import http.client
import os
import re
import socket
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import filelock
import platformdirs

from jaxembed.errors import InvalidArgumentError, InvalidTypeError, JaxembedError, MissingFileError, NotAFileError
from jaxembed.fileio import atomic_open

__all__ = [
    "CORPORA",
    "DEFAULT_TIMEOUT",
    "ROMEO_JULIET_URL",
    "CorpusUnavailableError",
    "cache_dir",
    "cached_path",
    "describe_network_error",
    "find_text_files",
    "gutenberg_note",
    "has_gutenberg_markers",
    "names_many_files",
    "load_text",
    "python_docs_text",
    "strip_gutenberg",
]

CORPORA: tuple[str, ...] = ("romeo-juliet", "python-docs")
ROMEO_JULIET_URL = "https://www.gutenberg.org/cache/epub/1513/pg1513.txt"
DEFAULT_TIMEOUT = 30.0  # seconds, for the whole download

# Test data and tooling, not prose; site-packages is not the stdlib at all.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "lib2to3"})
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_START = re.compile(r"^\*\*\* ?START OF.*$", re.MULTILINE)
_END = re.compile(r"^\*\*\* ?END OF", re.MULTILINE)
_GLOB_MAGIC = frozenset("*?[")


class CorpusUnavailableError(JaxembedError, RuntimeError):
    """A named corpus is neither cached nor downloadable right now."""


def cache_dir() -> Path:
    """Directory holding downloaded and generated corpora (not created here).

    >>> cached_path("romeo-juliet").parent == cache_dir()
    True
    """
    env = os.environ.get("JAXEMBED_CACHE")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("jaxembed"))


def cached_path(name: str) -> Path:
    """Where the named corpus ``name`` is (or will be) cached.

    >>> cached_path("romeo-juliet").name
    'romeo-juliet.txt'
    """
    if name == "romeo-juliet":
        return cache_dir() / "romeo-juliet.txt"
    if name == "python-docs":
        # The text depends on the interpreter, so each version gets its own file.
        return cache_dir() / f"python-docs-{sys.version_info[0]}.{sys.version_info[1]}.txt"
    raise InvalidArgumentError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")


def load_text(
    source: str | os.PathLike[str] = "romeo-juliet",
    *,
    strip: bool = False,
    url: str = ROMEO_JULIET_URL,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Return the text of a named corpus (see ``CORPORA``) or of a UTF-8 file.

    A string equal to a corpus name means that corpus; anything else is a path
    (write ``./romeo-juliet`` for a file with that name). ``strip=True`` keeps
    only the body between Gutenberg's START/END lines. ``url`` and ``timeout``
    only matter when ``romeo-juliet`` has to be downloaded.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.txt"
    >>> _ = path.write_bytes(b"\\xef\\xbb\\xbfTo be, or not to be\\r\\n")
    >>> load_text(path)
    'To be, or not to be\\n'
    >>> play = load_text("romeo-juliet", strip=True)  # doctest: +SKIP
    """
    if isinstance(source, str) and source in CORPORA:
        if source == "romeo-juliet" and os.environ.get("JAXEMBED_CORPUS"):
            text = _read_text_file(Path(os.environ["JAXEMBED_CORPUS"]), via="$JAXEMBED_CORPUS")
        else:
            path = cached_path(source)
            if not path.is_file():
                _build_once(source, path, url=url, timeout=timeout)
            text = _read_text_file(path)
    else:
        text = _read_text_file(Path(source))
    return strip_gutenberg(text) if strip else text


def names_many_files(source: str | os.PathLike[str]) -> bool:
    """True if ``source`` is a directory or a glob pattern (not a corpus name, not a file).

    >>> names_many_files("romeo-juliet"), names_many_files("books/*.txt"), names_many_files("/")
    (False, True, True)
    """
    if isinstance(source, str) and source in CORPORA:
        return False
    path = Path(source)
    return path.is_dir() or (not path.exists() and bool(_GLOB_MAGIC & set(os.fspath(source))))


def find_text_files(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], glob: str = "*.txt"
) -> list[Path]:
    """The files ``inputs`` name, as sorted unique absolute paths: the documents of a corpus.

    Args:
      inputs: files, directories (searched recursively for ``glob``) or glob
        patterns (``**`` recursive; a matched directory is searched too).
      glob: file name pattern used inside directories.

    Raises:
      ValueError: no inputs, an input does not exist or matches no files,
        or ``glob`` is empty.
      TypeError: an input is not a path.

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.txt", "a.txt", "notes.md"):
    ...     _ = (d / name).write_text("x")
    >>> [p.name for p in find_text_files([d, d / "b.txt"])]
    ['a.txt', 'b.txt']
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(inputs, Sequence) or not inputs:
        raise InvalidArgumentError(
            f"inputs={inputs!r} is not allowed; give one or more files, directories or glob patterns."
        )
    if not isinstance(glob, str) or not glob:
        raise InvalidArgumentError(f"glob={glob!r} is not allowed; give a file name pattern such as '*.txt'.")
    found: dict[str, Path] = {}
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            raise InvalidTypeError(f"inputs must hold paths (str or os.PathLike), got {type(item).__name__}: {item!r}.")
        name = os.fspath(item)
        path = Path(name)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = [p for p in path.rglob(glob) if p.is_file()]
        elif _GLOB_MAGIC & set(name):
            matches = []
            for hit in map(Path, glob_lib.glob(name, recursive=True)):
                matches += [hit] if hit.is_file() else [p for p in hit.rglob(glob) if p.is_file()]
        else:
            raise InvalidArgumentError(f"input {name!r} does not exist (and is not a glob pattern).")
        if not matches:
            raise InvalidArgumentError(f"input {name!r} matches no files (directories are searched for glob={glob!r}).")
        for p in matches:
            found.setdefault(os.path.abspath(p), Path(os.path.abspath(p)))
    return sorted(found.values())


def python_docs_text() -> str:
    """Build the ``python-docs`` corpus afresh (no cache; takes a few seconds).

    Modules are parsed, never imported, in sorted path order, so the result
    only depends on the interpreter's installed sources.

    >>> "Return" in python_docs_text()
    True
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]  # prune, don't walk
        files += [Path(dirpath, f).relative_to(root) for f in filenames if f.endswith(".py")]
    files.sort()
    docs: list[str] = []
    for rel in files:
        try:
            with warnings.catch_warnings():  # e.g. SyntaxWarning: invalid escape sequence
                warnings.simplefilter("ignore")
                tree = _parse(root / rel, str(rel))
        except (SyntaxError, ValueError, OSError):  # ValueError covers decode errors
            continue
        docs.extend(_docstrings(tree))
    if not docs:
        raise CorpusUnavailableError(f"no Python sources with docstrings found under {root}")
    return "\n\n".join(docs)


def has_gutenberg_markers(text: str) -> bool:
    """True if ``text`` has Gutenberg's ``*** START OF`` and ``*** END OF`` lines.

    >>> has_gutenberg_markers("x\\n*** START OF IT ***\\nbody\\n*** END OF IT ***\\n")
    True
    """
    start = _START.search(text)
    return start is not None and _END.search(text, start.end()) is not None


def strip_gutenberg(text: str) -> str:
    """Return the body between Gutenberg's START and END lines, else ``text``.

    >>> strip_gutenberg("licence\\n*** START OF IT ***\\nbody\\n*** END OF IT ***\\nmore")
    'body\\n'
    """
    start = _START.search(text)
    end = _END.search(text, start.end()) if start else None
    if start is None or end is None:
        return text
    return text[start.end() + 1 : end.start()]


def gutenberg_note(texts: str | Sequence[str], *, stripped: bool = True) -> str:
    """What a command did with the Project Gutenberg header and licence of ``texts``, in words.

    Every command that reads a text prints this, so two commands that tokenize the same
    file differently say why. ``stripped`` says whether the command applied
    ``strip_gutenberg`` (training does; the walk-through keeps the seed notebook's text).
    ``texts`` is one text, or the files of a corpus.

    >>> book = "licence\\n*** START OF IT ***\\nbody\\n*** END OF IT ***\\nmore"
    >>> gutenberg_note(book)
    'Project Gutenberg header and licence stripped: 5 of 55 characters kept'
    >>> gutenberg_note(book, stripped=False)
    'Project Gutenberg header and licence kept: all 55 characters (5 without them)'
    >>> gutenberg_note([book, "To be"])
    'Project Gutenberg header and licence stripped from 1 of 2 files: 10 of 60 characters kept'
    >>> gutenberg_note("To be, or not to be")
    'all 19 characters kept (no Project Gutenberg START and END lines to strip)'
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    total = sum(map(len, texts))
    marked = [t for t in texts if has_gutenberg_markers(t)]
    if not marked:
        return f"all {total:,} characters kept (no Project Gutenberg START and END lines to strip)"
    kept = total - sum(len(t) - len(strip_gutenberg(t)) for t in marked)
    where = "" if len(texts) == 1 else f" from {len(marked)} of {len(texts)} files"
    if stripped:
        return f"Project Gutenberg header and licence stripped{where}: {kept:,} of {total:,} characters kept"
    return f"Project Gutenberg header and licence kept{where}: all {total:,} characters ({kept:,} without them)"


def _build_once(name: str, path: Path, *, url: str, timeout: float) -> None:
    # Two threads or processes asking at once: one builds, the others wait on the lock and
    # then find the finished file (written atomically, so never seen half-written).
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(path.parent / f".{path.name}.lock"):
        if path.is_file():
            return
        if name == "romeo-juliet":
            _download(url, path, timeout=timeout)
        else:
            _write_atomic(path, python_docs_text().encode("utf-8"))


# CPython 3.11's AST constructor keeps its recursion depth in state shared by all threads
# (python/cpython#106905, fixed in 3.11.8 and 3.12.1): two threads parsing at once can fail with
# "SystemError: AST constructor recursion depth mismatch". The lock serialises jaxembed's own
# parses; the retry covers a parse running at the same time in code that does not take the lock.
_AST_LOCK = threading.Lock()
_AST_RETRIES = 20


def _parse(path: Path, filename: str) -> ast.Module:
    source = path.read_bytes()
    for attempt in range(_AST_RETRIES):
        try:
            with _AST_LOCK:
                return ast.parse(source, filename=filename)
        except SystemError as e:
            if "recursion depth mismatch" not in str(e) or attempt == _AST_RETRIES - 1:
                raise
            time.sleep(0.001 * (attempt + 1))  # let the other thread's parse finish
    raise AssertionError("unreachable")


#: Nodes that hold statements (and so, maybe, definitions): expressions never do.
_STATEMENT_HOLDERS = (ast.stmt, ast.excepthandler, ast.match_case)


def _docstrings(node: ast.AST) -> Iterator[str]:
    # Depth-first keeps each module's docstrings in source order, unlike ast.walk. Only lists of
    # statements are followed, in field order: every definition lies in one, and skipping the
    # expressions (most of a module's nodes) makes the walk several times shorter.
    if isinstance(node, _DOC_NODES) and (doc := ast.get_docstring(node)):
        yield doc
    for field in node._fields:
        children = getattr(node, field, None)
        if isinstance(children, list):
            for child in children:
                if isinstance(child, _STATEMENT_HOLDERS):
                    yield from _docstrings(child)


def _read_text_file(path: Path, via: str = "") -> str:
    where = f"{path} (from {via})" if via else str(path)
    if path.is_dir():
        raise NotAFileError(f"corpus path is a directory, not a text file: {where}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"corpus file not found: {where} (named corpora: {', '.join(CORPORA)})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgumentError(
            f"corpus file is not UTF-8: {where}: byte 0x{data[e.start]:02x} at offset {e.start}"
        ) from None
    # Same result as open(..., encoding="utf-8-sig"): no BOM, universal newlines,
    # so a CRLF download and an LF copy of the same book give identical text.
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise InvalidArgumentError(f"corpus file is empty (or only whitespace): {where}")
    return text


def _write_atomic(path: Path, data: bytes) -> None:
    # Readers must never see a half-written cache file: write aside, then rename.
    with atomic_open(path, "wb") as f:
        f.write(data)


def _download(url: str, dest: Path, *, timeout: float) -> None:
    try:
        data = _fetch(url, timeout)
        data.decode("utf-8")  # an HTML error page from a portal must not be cached
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}"
    except TimeoutError:
        reason = f"timed out after {timeout:g} s"
    except urllib.error.URLError as e:
        reason = describe_network_error(e.reason, timeout)
    except UnicodeDecodeError:
        reason = "the response is not UTF-8 text"
    except (OSError, http.client.HTTPException) as e:
        reason = describe_network_error(e, timeout)
    else:
        _write_atomic(dest, data)
        return
    raise CorpusUnavailableError(
        f"could not download the romeo-juliet corpus from {url}: {reason}.\n"
        f"Either save that file by hand to\n    {dest}\n"
        f"or use a local copy with --text PATH (or $JAXEMBED_CORPUS=PATH),\n"
        f"or use --corpus python-docs, which needs no network."
    ) from None


def _fetch(url: str, timeout: float) -> bytes:
    # The socket timeout bounds each stalled read; the deadline bounds a trickle.
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        while chunk := resp.read(1 << 16):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError
        expected = resp.headers.get("Content-Length")
    data = b"".join(chunks)
    if expected is not None and expected.isdigit() and len(data) != int(expected):
        # http.client returns a short body here instead of raising IncompleteRead.
        raise ConnectionError(f"connection closed after {len(data)} of {expected} bytes")
    return data


def describe_network_error(reason: object, timeout: float) -> str:
    """A urllib failure's reason in a few words, for a one-line error (corpus and GPT-2 downloads).

    Example:
      >>> describe_network_error(ConnectionRefusedError(), 30)
      'connection refused'
    """
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"could not resolve the host ({reason.strerror or reason})"
    return str(getattr(reason, "strerror", None) or reason)
