"""Tokenize many text files once into a memory-mapped token file.

``tokenize_files`` turns text files into one flat token array on disk,
``out_dir/tokens.npy`` (``uint16`` when the vocabulary fits, else
``uint32``), plus ``out_dir/meta.json`` describing it. ``open_tokens`` maps
it back read-only; ``jaxembed.data.loader`` gathers training windows straight from
that map, so a corpus never has to fit in RAM as text or as ids.

Layout: each document's tokens followed by the separator ``<|endoftext|>``
(GPT-2's convention), documents ordered by path. ``meta.json`` holds, per
document, its source path, byte size, SHA-256, whether a Project Gutenberg
header/licence was stripped, and ``[start, stop)``, its tokens in
``tokens.npy`` (the separator sits at ``stop``).

Streaming (``jaxembed.text.streaming``): each file is read and decoded in
pieces of ``READ_BYTES`` bytes and encoded in pieces of about
``PIECE_CHARS`` characters, cut only where the tokenizer's pre-tokenization
regex provably splits anyway, so the ids equal those of encoding each
document whole while memory stays independent of the corpus size. Pieces are
encoded by ``workers`` threads (tiktoken releases the GIL while encoding).
Inputs are found by ``jaxembed.text.corpus.find_text_files``.

Text is read as ``jaxembed.text.corpus.load_text(path, strip=True)`` reads it:
strict UTF-8, BOM dropped, CRLF/CR turned into LF, Gutenberg header and
licence stripped when both START and END lines are present. A literal
``<|endoftext|>`` inside a file is encoded as ordinary text, so separator
ids mark exactly the document ends.

Example:
  >>> import pathlib, tempfile
  >>> src = pathlib.Path(tempfile.mkdtemp())
  >>> _ = (src / "a.txt").write_text("Hello world")
  >>> _ = (src / "b.txt").write_text("To be, or not to be")
  >>> meta = tokenize_files([src], src / "tokens")
  >>> tokens, meta = open_tokens(src / "tokens")
  >>> tokens.dtype, tokens[:3].tolist(), meta["documents"][1]["start"]
  (dtype('uint16'), [15496, 995, 50256], 3)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tiktoken

from jaxembed.errors import InvalidArgumentError, InvalidTypeError, check_positive_int
from jaxembed.text import corpus, streaming
from jaxembed.text import tokenizer as tokenizer_lib

__all__ = [
    "FORMAT_VERSION",
    "SEPARATOR",
    "open_tokens",
    "tokenize_files",
]

FORMAT_VERSION = 1
SEPARATOR = tokenizer_lib.ENDOFTEXT
TOKENS_FILE, META_FILE = "tokens.npy", "meta.json"
_COPY_BYTES = 1 << 22  # per step when building tokens.npy from the raw temp file


def _token_dtype(n_vocab: int, name: str) -> np.dtype:
    if n_vocab <= 1 << 16:
        return np.dtype("<u2")
    if n_vocab <= 1 << 32:
        return np.dtype("<u4")
    raise InvalidArgumentError(
        f"tokenizer={name!r} has n_vocab={n_vocab}; its ids do not fit uint32, the widest dtype tokens.npy uses "
        f"(allowed: n_vocab <= {1 << 32})."
    )


def _jaxembed_version() -> str:
    try:
        return importlib.metadata.version("jaxembed")
    except importlib.metadata.PackageNotFoundError:
        import jaxembed

        return jaxembed.__version__


def _identity(meta: dict) -> tuple:
    """What makes two token directories the same corpus: format, tokenizer and source contents."""
    docs = tuple((d["sha256"], d["bytes"]) for d in meta.get("documents", ()))
    return (meta.get("format_version"), meta.get("tokenizer"), meta.get("n_vocab"), meta.get("dtype"), docs)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _get_encoding(tokenizer: str | tiktoken.Encoding) -> tiktoken.Encoding:
    if isinstance(tokenizer, tiktoken.Encoding):
        return tokenizer
    if not isinstance(tokenizer, str):
        raise InvalidTypeError(
            f"tokenizer must be an encoding name or a tiktoken.Encoding, got {type(tokenizer).__name__}."
        )
    return tokenizer_lib.get_encoding(tokenizer)


def _check_out_dir(out: Path, new_meta: dict, overwrite: bool) -> dict | None:
    """Returns the existing meta when ``out`` already holds this very corpus, intact."""
    has_tokens, has_meta = (out / TOKENS_FILE).exists(), (out / META_FILE).exists()
    if not (has_tokens or has_meta):
        return None
    try:
        _, old = open_tokens(out)
    except ValueError as e:
        if overwrite:
            return None
        raise InvalidArgumentError(
            f"out_dir={str(out)!r} already holds {TOKENS_FILE}/{META_FILE} that are not a complete token corpus "
            f"({e}); replace them with overwrite=True (jaxembed tokenize --overwrite)."
        ) from None
    if _identity(old) == _identity(new_meta):
        if overwrite:
            return None
        if _file_sha256(out / TOKENS_FILE) == old.get("tokens_sha256"):
            return old
        return None  # same corpus, damaged file: rebuild it
    if overwrite:
        return None
    raise InvalidArgumentError(
        f"out_dir={str(out)!r} already holds a different token corpus ({_describe_difference(old, new_meta)}); "
        "replace it with overwrite=True (jaxembed tokenize --overwrite), or choose another out_dir."
    )


def _describe_difference(old: dict, new: dict) -> str:
    for key in ("format_version", "tokenizer", "n_vocab", "dtype"):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} there, {new.get(key)!r} now"
    a, b = old.get("documents", []), new["documents"]
    for i, (x, y) in enumerate(zip(a, b)):
        if (x.get("sha256"), x.get("bytes")) != (y["sha256"], y["bytes"]):
            return f"document {i}: {x.get('path')} (sha256 {str(x.get('sha256'))[:12]}...) there, {y['path']} (sha256 {y['sha256'][:12]}...) now"
    return f"{len(a)} documents there, {len(b)} now"


def tokenize_files(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: str | tiktoken.Encoding = "gpt2",
    glob: str = "*.txt",
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Tokenizes text files into ``out_dir/tokens.npy`` and ``out_dir/meta.json``.

    Each file is one document: its tokens, then the ``<|endoftext|>`` id.
    Documents are ordered by path (component-wise), whatever the order of
    ``inputs``; a file named twice counts once. Memory stays bounded (about
    ``READ_BYTES + (2 * workers + 2) * PIECE_CHARS`` characters plus the
    tokenizer) whatever the corpus size, except for text with no safe cut
    (see ``streaming.BoundaryRule``) for ``PIECE_CHARS`` characters, or a tokenizer
    whose regex is not one of GPT-2's, cl100k's or o200k's (then each document
    is encoded whole).

    Writing is atomic: results go to temporary files in ``out_dir`` that are
    renamed at the end, ``meta.json`` last (an old ``meta.json`` is removed
    before the new ``tokens.npy`` replaces the old), so an interrupted run
    leaves either the previous result or none. ``open_tokens`` refuses a
    ``tokens.npy`` without ``meta.json``.

    Running again on the same corpus (same tokenizer, same file contents in
    the same order; paths may differ) is a no-op that returns the existing
    meta, once ``tokens.npy`` is checked against its SHA-256.

    Args:
      inputs: text files, directories (searched recursively for ``glob``)
        or glob patterns (``**`` recursive); CLI ``INPUT...``.
      out_dir: directory for ``tokens.npy`` and ``meta.json``, created if
        missing; CLI ``--out``.
      tokenizer: encoding name for ``jaxembed.text.tokenizer.get_encoding``, or a
        ``tiktoken.Encoding`` that has ``<|endoftext|>``; CLI ``--tokenizer``.
      glob: file name pattern used inside directories; CLI ``--glob``.
      workers: encoding threads; ``None``: one per CPU; CLI ``--workers``.
      overwrite: replace a different corpus already in ``out_dir`` (or
        rebuild the same one); CLI ``--overwrite``.
      progress: show a tqdm bar (bytes read, tokens/s) on stderr.

    Returns:
      The meta dict written to ``meta.json``: ``format_version``,
      ``tokenizer``, ``n_vocab``, ``separator``, ``separator_id``, ``dtype``
      (``"uint16"``/``"uint32"``), ``num_tokens``, ``num_documents``,
      ``tokens_sha256`` (of the whole ``tokens.npy`` file),
      ``jaxembed_version`` and ``documents``: a list of ``{"path", "bytes",
      "sha256", "gutenberg_stripped", "start", "stop"}``.

    Raises:
      ValueError: an input does not exist or matches no files; a file is
        empty, only whitespace, or not UTF-8 (path and byte offset); out_dir
        holds another corpus and ``overwrite`` is False; the tokenizer is
        unknown, lacks ``<|endoftext|>``, or its ids do not fit uint32;
        ``workers`` or ``glob`` is invalid.
      TypeError: an input is not a path.

    Example:
      >>> import pathlib, tempfile
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (d / "play.txt").write_text("Romeo, Romeo!\\n")
      >>> meta = tokenize_files([d / "play.txt"], d / "out")
      >>> meta["num_tokens"], meta["dtype"], meta["documents"][0]["stop"]
      (8, 'uint16', 7)
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    check_positive_int(workers, "workers")  # None means one per CPU
    workers = int(workers)
    enc = _get_encoding(tokenizer)
    if SEPARATOR not in enc.special_tokens_set:
        raise InvalidArgumentError(f"tokenizer={enc.name!r} has no {SEPARATOR} special token to separate documents.")
    dtype = _token_dtype(enc.n_vocab, enc.name)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"out_dir={str(out)!r} exists and is not a directory.")
    paths = corpus.find_text_files(inputs, glob)

    bar = _bar(progress, sum(p.stat().st_size for p in paths), "scanning")
    sources = []
    for p in paths:
        sources.append(streaming.scan(p))
        if bar is not None:
            bar.update(sources[-1].size)
    if bar is not None:
        bar.close()
    meta = {
        "format": "jaxembed-tokens",
        "format_version": FORMAT_VERSION,
        "tokenizer": enc.name,
        "n_vocab": enc.n_vocab,
        "separator": SEPARATOR,
        "separator_id": enc.encode_single_token(SEPARATOR),
        "dtype": dtype.name,
        "num_tokens": None,
        "num_documents": len(sources),
        "tokens_sha256": None,
        "jaxembed_version": _jaxembed_version(),
        "documents": [s.record() for s in sources],
    }
    existing = _check_out_dir(out, meta, overwrite)
    if existing is not None:
        return existing
    out.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        raw = _temp(out, "tokens.raw", temps)
        bar = _bar(progress, sum(s.size for s in sources), "tokenizing")
        with open(raw, "wb") as f:
            spans = streaming.encode_documents(sources, enc, dtype, workers, f, bar)
        if bar is not None:
            bar.close()
        num_tokens = spans[-1][1] + 1
        for record, (start, stop) in zip(meta["documents"], spans):
            record["start"], record["stop"] = start, stop
        meta["num_tokens"] = num_tokens

        tokens_tmp = _temp(out, TOKENS_FILE, temps)
        # open_memmap writes the .npy header and sizes the file; the tokens are
        # then copied with plain file I/O, since pages touched through a map
        # count towards this process's RSS until it ends.
        tokens_N = np.lib.format.open_memmap(tokens_tmp, mode="w+", dtype=dtype, shape=(num_tokens,))
        header_bytes = tokens_N.offset
        del tokens_N
        with open(raw, "rb") as src, open(tokens_tmp, "r+b") as dst:
            dst.seek(header_bytes)
            shutil.copyfileobj(src, dst, _COPY_BYTES)
            if dst.tell() != header_bytes + num_tokens * dtype.itemsize:
                raise RuntimeError(
                    f"tokens.npy came out with {dst.tell()} bytes, not {header_bytes} + {num_tokens} tokens"
                )
            dst.flush()
            os.fsync(dst.fileno())
        raw.unlink()
        meta["tokens_sha256"] = _file_sha256(tokens_tmp)

        meta_tmp = _temp(out, META_FILE, temps)
        meta_tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        _fsync(meta_tmp)
        # meta.json goes first and comes back last: in between, tokens.npy has
        # no meta.json, which open_tokens refuses, so old meta never describes new tokens.
        (out / META_FILE).unlink(missing_ok=True)
        os.replace(tokens_tmp, out / TOKENS_FILE)
        os.replace(meta_tmp, out / META_FILE)
        _fsync_dir(out)
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    return meta


def _temp(out: Path, name: str, temps: list[Path]) -> Path:
    tmp = out / f".{name}.{uuid.uuid4().hex[:8]}.part"
    # Not mkstemp: its 0600 mode would survive the rename; 0666 lets the umask decide, as for every file we write.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    temps.append(tmp)
    return tmp


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, dynamic_ncols=True)


def open_tokens(directory: str | os.PathLike[str], *, verify: bool = False) -> tuple[np.memmap, dict]:
    """Maps ``directory/tokens.npy`` read-only and returns it with its meta.

    Checks that ``meta.json`` describes the file: format, dtype (``uint16``
    or ``uint32``), length, and document spans inside it; ``verify=True``
    also checks the SHA-256 of ``tokens.npy`` (reads the whole file).

    Args:
      directory: a directory written by ``tokenize_files``.
      verify: also compare the file's SHA-256 with ``meta["tokens_sha256"]``.

    Returns:
      ``(tokens_N, meta)``: ``tokens_N`` a read-only ``np.memmap`` of shape
      ``[num_tokens]``; ``meta`` the dict of ``meta.json``.

    Raises:
      ValueError: the directory, ``meta.json`` or ``tokens.npy`` is missing
        (e.g. an interrupted run), unreadable, or they disagree.

    Example:
      >>> import pathlib, tempfile
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (d / "a.txt").write_text("Hello world")
      >>> _ = tokenize_files([d], d)
      >>> tokens_N, meta = open_tokens(d, verify=True)
      >>> tokens_N.tolist(), meta["tokenizer"]
      ([15496, 995, 50256], 'gpt2')
    """
    d = Path(directory)
    if not d.is_dir():
        raise InvalidArgumentError(
            f"token directory {str(d)!r} does not exist (write one with tokenize_files / jaxembed tokenize)."
        )
    meta_path, tokens_path = d / META_FILE, d / TOKENS_FILE
    if not meta_path.is_file():
        hint = " (tokens.npy without meta.json: an interrupted run?)" if tokens_path.exists() else ""
        raise InvalidArgumentError(f"{str(d)!r} is not a complete token directory: {META_FILE} is missing{hint}.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise InvalidArgumentError("not a JSON object")
        n, dtype_name, docs = int(meta["num_tokens"]), str(meta["dtype"]), meta["documents"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidArgumentError(
            f"{str(meta_path)!r} is not a valid token meta file: {type(e).__name__}: {e}"
        ) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise InvalidArgumentError(
            f"{str(meta_path)!r} has format_version={meta.get('format_version')!r}; this jaxembed reads {FORMAT_VERSION}."
        )
    if dtype_name not in ("uint16", "uint32"):
        raise InvalidArgumentError(f"{str(meta_path)!r} says dtype={dtype_name!r}; allowed: 'uint16', 'uint32'.")
    if not tokens_path.is_file():
        raise InvalidArgumentError(f"{str(d)!r} is not a complete token directory: {TOKENS_FILE} is missing.")
    try:
        tokens = np.load(tokens_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InvalidArgumentError(f"{str(tokens_path)!r} is not a readable .npy file: {e}") from None
    if tokens.ndim != 1 or tokens.dtype != np.dtype(dtype_name) or len(tokens) != n:
        raise InvalidArgumentError(
            f"{str(tokens_path)!r} holds {tokens.dtype} of shape {tokens.shape}, but {META_FILE} says {dtype_name} of "
            f"shape ({n},); the directory is corrupt: rebuild it with overwrite=True."
        )
    _check_spans(meta_path, tokens, docs, meta.get("separator_id"))
    if verify and _file_sha256(tokens_path) != meta.get("tokens_sha256"):
        raise InvalidArgumentError(
            f"{str(tokens_path)!r} does not match the SHA-256 in {META_FILE}; rebuild it with overwrite=True."
        )
    return tokens, meta


def _check_spans(meta_path: Path, tokens: np.ndarray, docs: list, separator_id: object) -> None:
    try:
        starts = np.array([d["start"] for d in docs], dtype=np.int64)
        stops = np.array([d["stop"] for d in docs], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{str(meta_path)!r}: bad document spans: {type(e).__name__}: {e}") from None
    n = len(tokens)
    # Documents tile tokens.npy: each [start, stop) followed by the separator at stop.
    ok = len(docs) > 0 and starts[0] == 0 and stops[-1] == n - 1 and bool(np.all(starts <= stops))
    ok = ok and bool(np.all(starts[1:] == stops[:-1] + 1))
    if ok and not bool(np.all(tokens[stops] == separator_id)):
        raise InvalidArgumentError(
            f"{str(meta_path)!r}: tokens.npy has no separator id {separator_id} at some document end."
        )
    if not ok:
        raise InvalidArgumentError(f"{str(meta_path)!r}: document spans do not tile tokens.npy ({n} tokens).")
